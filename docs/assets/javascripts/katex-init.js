// Render the formulas that pymdownx.arithmatex marks (generic mode) with the bundled KaTeX.
// Runs on every page load (and on Material's instant navigation, when enabled).
function camlensRenderMath(root) {
  for (const el of root.querySelectorAll(".arithmatex")) {
    const tex = el.textContent.trim();
    const display = tex.startsWith("\\[");
    const body = tex.replace(/^\\[\[(]/, "").replace(/\\[\])]$/, "");
    katex.render(body, el, { displayMode: display, throwOnError: false });
  }
}
if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => camlensRenderMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => camlensRenderMath(document.body));
}
