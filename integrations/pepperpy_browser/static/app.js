// Forms that change something ask first (data-confirm). No inline script anywhere: the
// Content-Security-Policy allows only this file.
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
