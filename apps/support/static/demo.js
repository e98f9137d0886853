// The hero's search box asks the assistant (the widget's small public API).
document.getElementById("help-search").addEventListener("submit", function (event) {
  event.preventDefault();
  var q = this.elements.q.value.trim();
  if (q && window.SupportWidget) window.SupportWidget.ask(q);
});
