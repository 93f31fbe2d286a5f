// The ipywidgets HTML manager takes the folder of its fonts from the URL require.js gives its own module; map that
// module to the site's _static/jupyter-widgets (next to this file) instead of the page's folder.
(function () {
  var here = document.currentScript.src.replace(/[^/]*([?#].*)?$/, '');
  require.config({paths: {'@jupyter-widgets/html-manager/dist': here + 'jupyter-widgets'}});
})();
