// radlake predict page and the image page's prediction toggles. Uses app.js's
// csrfToken, postJson and detailOf (loaded first: both scripts are deferred, in order).
// The form posts to POST /predict with the session cookie and the page's CSRF token;
// the answer's boxes are in the stored image's pixels, so the SVG overlay's viewBox is
// the stored size and the browser scales it with the rendering beneath.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function clampThreshold(input) {
  // A range input cannot leave [min, max]; clamp anyway if a script set it.
  const value = Math.min(1, Math.max(0, Number(input.value) || 0));
  input.value = String(value);
  return value;
}

function setupSliders(form) {
  for (const [id, out] of [["score", "score-value"], ["iou", "iou-value"]]) {
    const input = document.getElementById(id);
    const shown = document.getElementById(out);
    if (!input || !shown) continue;
    const update = () => { shown.textContent = clampThreshold(input).toFixed(2); };
    input.addEventListener("input", update);
    update();
  }
}

function paletteOf() {
  const node = document.getElementById("predict-palette");
  return node ? JSON.parse(node.textContent) : ["#ff3b30"];
}

function drawBoxes(answer, palette) {
  const overlay = document.getElementById("predict-overlay");
  overlay.setAttribute("viewBox", "0 0 " + answer.width + " " + answer.height);
  overlay.replaceChildren();
  const rows = document.getElementById("predict-boxes");
  rows.replaceChildren();
  for (const found of answer.detections) {
    const box = found.box;
    const colour = palette[found.class_id % palette.length];
    const rect = document.createElementNS(SVG_NS, "rect");
    rect.setAttribute("class", "pred");
    rect.setAttribute("x", box.x_min);
    rect.setAttribute("y", box.y_min);
    rect.setAttribute("width", box.x_max - box.x_min);
    rect.setAttribute("height", box.y_max - box.y_min);
    rect.setAttribute("fill", "none");
    rect.setAttribute("stroke", colour);
    rect.setAttribute("stroke-width", "3");
    rect.setAttribute("vector-effect", "non-scaling-stroke");
    rect.dataset.class = found.class_name;
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = found.class_name + " · " + found.score.toFixed(3);
    rect.append(title);
    overlay.append(rect);
    const row = document.createElement("tr");
    const coords = [box.x_min, box.y_min, box.x_max, box.y_max].map((v) => v.toFixed(1));
    for (const text of [found.class_name, found.score.toFixed(3), coords.join(", ")]) {
      const cell = document.createElement("td");
      cell.textContent = text;  // text, never markup: class names come from model files
      row.append(cell);
    }
    rows.append(row);
  }
}

function showAnswer(answer, roundTripMs, palette) {
  const section = document.getElementById("predict-result");
  const source = "/images/" + encodeURIComponent(answer.image_id) + "/render";
  for (const id of ["predict-original", "predict-annotated"]) {
    document.getElementById(id).src = source;
  }
  drawBoxes(answer, palette);
  const summary = document.getElementById("predict-summary");
  const count = answer.detections.length;
  const link = document.createElement("a");
  link.href = "/ui/images/" + encodeURIComponent(answer.image_id);
  link.textContent = "image " + answer.image_id;
  const stored = answer.uploaded
    ? (answer.uploaded.already_present ? " (already in the lake)" : " (stored as a new image)")
    : "";
  summary.replaceChildren(
    count + (count === 1 ? " box" : " boxes") + " from " + answer.model + ":" + answer.version +
      " on ", link, stored + ". Inference ",
  );
  const time = document.createElement("strong");
  time.id = "predict-time";
  time.textContent = answer.latency_ms.toFixed(0) + " ms";
  summary.append(time, " (round trip " + roundTripMs.toFixed(0) + " ms), run " + answer.run_id + ".");
  section.hidden = false;
}

function setupPredict() {
  const form = document.getElementById("predict");
  if (!form) return;
  const status = document.getElementById("predict-status");
  const palette = paletteOf();
  setupSliders(form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const file = form.querySelector("input[type=file]");
    if (file && file.files.length) {
      data.delete("image_id");  // the upload is the image
    } else {
      data.delete("file");  // an empty file part would read as an upload
      if (!data.get("image_id")) {
        status.className = "result error";
        status.textContent = file ? "Choose a file or give an image id." : "Give an image id.";
        return;
      }
    }
    for (const name of ["score_threshold", "iou_threshold"]) {
      const input = form.querySelector("input[name=" + name + "]");
      data.set(name, String(clampThreshold(input)));
    }
    const button = form.querySelector("button");
    button.disabled = true;
    status.className = "result";
    status.textContent = "Running…";
    const started = performance.now();
    const answer = await postJson("/predict", { method: "POST", body: data });
    const roundTrip = performance.now() - started;
    button.disabled = false;
    if (answer.ok) {
      status.textContent = "";
      showAnswer(answer.body, roundTrip, palette);
    } else {
      status.className = "result error";
      status.textContent = "Not run (" + answer.status + "): " + detailOf(answer.body, answer.status);
    }
  });
}

function setupPredictionToggles() {
  // The image page: one checkbox per model version shows or hides its boxes.
  for (const input of document.querySelectorAll("input[data-prediction]")) {
    input.addEventListener("change", () => {
      for (const rect of document.querySelectorAll("svg.overlay rect.pred")) {
        if (rect.dataset.version === input.dataset.prediction) {
          rect.classList.toggle("hidden", !input.checked);
        }
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupPredict();
  setupPredictionToggles();
});
