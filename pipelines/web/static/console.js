// reglink console: keyboard shortcuts. No other script runs on these pages.
(function () {
  "use strict";
  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }
  function press(id) {
    var button = document.getElementById(id);
    if (button) { button.click(); return true; }
    return false;
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (typing(event.target)) {
      if (event.key === "Escape") { event.target.blur(); }
      return;
    }
    var handled = false;
    switch (event.key) {
      case "a": handled = press("btn-accept"); break;
      case "r": handled = press("btn-reject"); break;
      case "s": handled = press("btn-skip"); break;
      case "/": {
        var box = document.getElementById("reason") || document.getElementById("q");
        if (box) { box.focus(); handled = true; }
        break;
      }
      case "n": {
        var next = document.getElementById("start-review");
        if (next) { next.click(); handled = true; }
        break;
      }
    }
    if (handled) { event.preventDefault(); }
  });
})();
