"""GPU readiness of the pixel protocol (`diffusion_reward.compare_rl.gpu_readiness`, nbs/16_compare_rl): the pixel
DrQ-v2 learner's updates/s in float32, bfloat16 autocast and compiled, beside a reference-style update timed in the same
run, then env frames/s of the whole pixel loop with the fastest variant and the small Diffusion Reward model on
the same device. Run it through .ci/gpu_rl.sh."""
from fastcore.script import call_parse
from diffusion_reward.core import save_json
from diffusion_reward.compare_rl import gpu_readiness

@call_parse
def main(device:str='cuda', # device to measure
         task:str='door-close-v3', # task of the loop
         reward:str='diffusion_likelihood_fast', # reward of the loop
         reward_checkpoint:str=None, # trained reward model (path or shipped name); default: a random-weight stand-in
         preset:str='paper', # agent and run preset (tiny: a smoke test)
         model_preset:str='small', # stand-in reward model preset
         updates:int=200, # timed learner updates per variant
         warmup:int=5, # untimed learner updates before them
         episodes:int=3, # timed loop episodes
         variants:str=None, # comma-separated learner variants (fp32, bf16, bf16+compile); default: all on a GPU
         episode_steps:int=None, # agent steps per episode; default: the task's
         out:str=None, # also write the figures to this JSON file
        ):
    "Print the pixel protocol's learner and loop speed on a device."
    res = gpu_readiness(device, task, reward, reward_checkpoint, preset, model_preset, updates, warmup, episodes,
                        tuple(variants.split(',')) if variants else None, episode_steps)
    if out: save_json(res, out)
