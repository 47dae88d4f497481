// Draws the page's figures (a JSON block the server wrote) with plotly.js, served by
// this app. Sets data-charts on <body> to the number drawn, or "failed" (tests read it).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const block = document.getElementById("figures");
  const figures = block ? JSON.parse(block.textContent) : {};
  const drawing = Object.entries(figures).map(([key, figure]) => {
    const target = document.getElementById("chart-" + key);
    if (!target) return Promise.resolve(false);
    return Plotly.newPlot(target, figure.data, figure.layout, {
      displaylogo: false,
      displayModeBar: false, // its buttons' rules would be inline styles (refused by the CSP)
      responsive: true,
    }).then(() => true);
  });
  Promise.all(drawing).then(
    (drawn) => { document.body.dataset.charts = String(drawn.filter(Boolean).length); },
    (error) => { document.body.dataset.charts = "failed"; console.error(error); },
  );
});
