/* Draws Chart.js charts from data embedded with json_script: <canvas data-chart-source="script-id">.
   An empty data set draws empty axes under the page's empty-state message; nothing is invented. */
(function () {
  "use strict";
  if (!window.Chart) return;
  document.querySelectorAll("canvas[data-chart-source]").forEach(function (canvas) {
    var source = document.getElementById(canvas.dataset.chartSource);
    if (!source) return;
    var data = JSON.parse(source.textContent);
    new window.Chart(canvas, {
      type: canvas.dataset.chartType || "bar",
      data: { labels: data.labels || [], datasets: data.datasets || [] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: { legend: { display: (data.datasets || []).length > 1 } },
        scales: { y: { beginAtZero: true } }
      }
    });
  });
})();
