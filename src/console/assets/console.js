// keygate console: the only script. A "Copy" button copies the text of the element its
// data-copy names (the new key's secret). Loaded from this origin (CSP: script-src 'self').
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent).then(function () {
    button.textContent = "Copied";
  });
});
