// Progressive enhancement: a Copy button next to each pull command. The
// page works without it; the button stays hidden where scripts do not run.
document.addEventListener("DOMContentLoaded", function () {
  function copied(button) {
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = "Copy"; }, 1500);
  }
  function fallback(source, button) {
    // Plain-HTTP pages on another host are no secure context: no navigator.clipboard there.
    var range = document.createRange();
    range.selectNodeContents(source);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try { if (document.execCommand("copy")) { copied(button); } } catch (e) { /* the text stays selected */ }
  }
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(source.textContent).then(function () { copied(button); },
                                                               function () { fallback(source, button); });
      } else {
        fallback(source, button);
      }
    });
  });
});
