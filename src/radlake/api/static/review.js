// radlake image page: review the predicted boxes (issue 11). Uses app.js's postJson and
// detailOf (loaded first: both scripts are deferred, in order), so every verdict goes
// with the session cookie and the page's CSRF token.
//   Accept / Reject  -> POST /predictions/{id}/feedback {verdict}
//   Correct          -> the same with class_name and/or box: pick a class, drag the
//                       box or a corner, or draw it again on the image
//   Add box          -> POST /images/{id}/feedback {class_name, box, run_id}: draw it
// Boxes are in the stored image's pixels: the overlay's viewBox is that size, and
// pointer positions are mapped into it through the SVG's own screen transform.
"use strict";

const REVIEW_SVG = "http://www.w3.org/2000/svg";
const WORDS = { accept: "accepted", reject: "rejected", correct: "corrected", add: "added", none: "nothing missed" };
const MIN_SIDE = 1; // px of the image: a click is not a box

function reviewState() {
  const node = document.getElementById("review-state");
  return node ? JSON.parse(node.textContent) : null;
}

function svgNode(name, attributes) {
  const node = document.createElementNS(REVIEW_SVG, name);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  return node;
}

function boxText(box) {
  return [box.x_min, box.y_min, box.x_max, box.y_max].map((v) => v.toFixed(1)).join(", ");
}

function rectBox(rect) {
  const x = +rect.getAttribute("x"), y = +rect.getAttribute("y");
  return { x_min: x, y_min: y, x_max: x + +rect.getAttribute("width"), y_max: y + +rect.getAttribute("height") };
}

function placeRect(rect, box) {
  rect.setAttribute("x", box.x_min);
  rect.setAttribute("y", box.y_min);
  rect.setAttribute("width", box.x_max - box.x_min);
  rect.setAttribute("height", box.y_max - box.y_min);
}

function rounded(box) {
  // Hundredths of a pixel: what a pointer can mean, and short in the catalog.
  const out = {};
  for (const key of ["x_min", "y_min", "x_max", "y_max"]) out[key] = Math.round(box[key] * 100) / 100;
  return out;
}

class Reviewer {
  constructor(state) {
    this.state = state;
    this.svg = document.querySelector("svg.overlay");
    const view = this.svg.viewBox.baseVal;
    this.width = view.width;
    this.height = view.height;
    this.status = document.getElementById("review-status");
    this.editor = document.getElementById("review-editor");
    this.classSelect = document.getElementById("review-class");
    this.runSelect = document.getElementById("review-run");
    this.coords = document.getElementById("review-coords");
    this.layer = svgNode("g", { class: "review-layer" });
    this.svg.append(this.layer);
    this.labels = new Map(); // prediction id or "add:<feedback id>" -> {group, item, rect}
    this.editing = null; // {kind: "correct"|"add", predictionId, runId, original, box}
    this.drag = null;
    this.runs = new Map(state.runs.map((run) => [String(run.run_id), run]));
    for (const [predictionId, item] of Object.entries(state.mine)) this.showVerdict(predictionId, item);
    for (const item of state.added) this.showAdded(item);
    this.bind();
    // Labels are sized in screen pixels: draw them again once the rendering has its size.
    const image = document.getElementById("rendering");
    if (image && !image.complete) image.addEventListener("load", () => this.relabel());
  }

  bind() {
    for (const row of document.querySelectorAll("#review-boxes tr[data-prediction-id]")) {
      for (const button of row.querySelectorAll("button[data-verdict]")) {
        button.addEventListener("click", () => this.onVerdict(row, button.dataset.verdict));
      }
    }
    document.getElementById("review-add").addEventListener("click", () => this.startAdd());
    // One "Nothing missed" per model run shown: an image where the model found nothing
    // and nothing is there leaves the review queue this way.
    for (const run of this.state.runs) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.dataset.noneRun = String(run.run_id);
      button.textContent = "Nothing missed" + (this.state.runs.length > 1 ? " (" + run.version + ")" : "");
      button.addEventListener("click", () => this.send(
        "/images/" + encodeURIComponent(this.state.image_id) + "/feedback",
        { verdict: "none", run_id: run.run_id }, () => {}));
      document.getElementById("review-none").append(button, " ");
    }
    document.getElementById("review-save").addEventListener("click", () => this.save());
    document.getElementById("review-cancel").addEventListener("click", () => this.stopEditing(""));
    document.getElementById("review-redraw").addEventListener("click", () => {
      if (!this.editing) return;
      this.editing.box = null;
      this.drawEditBox();
      this.say("Draw the box on the image: press, drag, release.", "");
    });
    this.svg.addEventListener("pointerdown", (event) => this.onDown(event));
    this.svg.addEventListener("pointermove", (event) => this.onMove(event));
    this.svg.addEventListener("pointerup", (event) => this.onUp(event));
    this.svg.addEventListener("pointercancel", () => { this.drag = null; });
  }

  say(text, kind) {
    this.status.className = "result" + (kind ? " " + kind : "");
    this.status.textContent = text;
  }

  predictionRect(predictionId) {
    return this.svg.querySelector('rect.pred[data-prediction-id="' + CSS.escape(String(predictionId)) + '"]');
  }

  // ------------------------------------------------------------------ verdicts

  async onVerdict(row, verdict) {
    const predictionId = row.dataset.predictionId;
    if (verdict === "correct") {
      this.startCorrect(row);
      return;
    }
    this.stopEditing("");
    await this.send("/predictions/" + encodeURIComponent(predictionId) + "/feedback",
      { verdict: verdict }, (item) => this.showVerdict(predictionId, item));
  }

  async send(url, body, done) {
    const buttons = document.querySelectorAll("#review button");
    for (const button of buttons) button.disabled = true;
    this.say("Saving…", "");
    const answer = await postJson(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    for (const button of buttons) button.disabled = false;
    if (!answer.ok) {
      this.say("Not saved (" + answer.status + "): " + detailOf(answer.body, answer.status), "error");
      return false;
    }
    const item = answer.body;
    done(item);
    this.recordRow(item);
    const again = answer.status === 200 ? " (your earlier verdict was replaced)" : "";
    this.say("Saved: " + WORDS[item.verdict] + (item.class_name ? " as " + item.class_name : "") + again + ".", "ok");
    return true;
  }

  showVerdict(predictionId, item) {
    const row = document.querySelector('#review-boxes tr[data-prediction-id="' + CSS.escape(String(predictionId)) + '"]');
    if (row) {
      const cell = row.querySelector(".verdict");
      cell.textContent = WORDS[item.verdict];
      if (item.verdict === "correct") {
        const detail = document.createElement("small");
        detail.textContent = " " + item.class_name + " · " + boxText(item.box);
        cell.append(detail);
      }
      row.dataset.verdict = item.verdict;
    }
    const rect = this.predictionRect(predictionId);
    if (rect) {
      rect.classList.remove("verdict-accept", "verdict-reject", "verdict-correct");
      rect.classList.add("verdict-" + item.verdict);
    }
    this.drawLabel(String(predictionId), item, rect);
  }

  showAdded(item) {
    const body = document.querySelector("#review-boxes tbody");
    let row = body.querySelector('tr[data-added="' + item.id + '"]');
    if (!row) {
      row = document.createElement("tr");
      row.dataset.added = String(item.id);
      const what = document.createElement("td");
      const verdict = document.createElement("td");
      verdict.className = "verdict";
      row.append(what, verdict, document.createElement("td"));
      body.append(row);
    }
    row.cells[0].textContent = item.class_name + " ";
    const where = document.createElement("small");
    where.textContent = item.model + ":" + item.version + " · " + boxText(item.box);
    row.cells[0].append(where);
    row.cells[1].textContent = WORDS.add;
    this.drawLabel("add:" + item.id, item, null);
  }

  screenScale() {
    // Image pixels per screen pixel (1 until the rendering has a size).
    const shown = this.svg.getBoundingClientRect().width;
    return shown > 0 ? this.width / shown : 1;
  }

  relabel() {
    for (const [key, mark] of this.labels) this.drawLabel(key, mark.item, mark.rect);
  }

  drawLabel(key, item, rect) {
    // The verdict beside the box on the image; a corrected or added box is drawn too.
    const old = this.labels.get(key);
    if (old) old.group.remove();
    const group = svgNode("g", { class: "review-mark verdict-" + item.verdict });
    const box = item.box || (rect ? rectBox(rect) : null);
    if (!box) return;
    if (item.verdict === "correct" || item.verdict === "add") {
      const drawn = svgNode("rect", { class: "fb-box", "vector-effect": "non-scaling-stroke" });
      placeRect(drawn, box);
      group.append(drawn);
    }
    const scale = this.screenScale();
    const text = svgNode("text", {
      x: box.x_min + 2 * scale,
      y: Math.max(box.y_min - 3 * scale, 11 * scale),
      "font-size": 11 * scale,
    });
    text.textContent = WORDS[item.verdict] + (item.class_name && item.verdict !== "accept" ? ": " + item.class_name : "");
    group.append(text);
    this.layer.append(group);
    this.labels.set(key, { group, item, rect });
  }

  recordRow(item) {
    // The page's feedback table follows what was filed.
    const table = document.getElementById("feedback");
    if (!table) return;
    const empty = document.getElementById("feedback-empty");
    if (empty) empty.remove();
    table.hidden = false;
    const body = table.tBodies[0];
    let row = body.querySelector('tr[data-feedback-id="' + item.id + '"]');
    if (!row) {
      row = document.createElement("tr");
      row.dataset.feedbackId = String(item.id);
      body.append(row);
    }
    const cells = [WORDS[item.verdict],
      item.class_name ? item.class_name + (item.box ? " " + boxText(item.box) : "") : "—",
      item.model + ":" + item.version];
    if (table.dataset.reviewers === "yes") cells.push(item.reviewer || "");
    cells.push(item.channel);
    row.replaceChildren(...cells.map((text) => {
      const cell = document.createElement("td");
      cell.textContent = text; // text, never markup: class names come from model files
      return cell;
    }));
    if (item.simulated) {
      const badge = document.createElement("span");
      badge.className = "badge simulated";
      badge.textContent = "simulated";
      row.cells[0].append(" ", badge);
    }
    const count = document.getElementById("feedback-count");
    const n = body.rows.length;
    if (count) count.textContent = n + (n === 1 ? " verdict" : " verdicts");
  }

  // ------------------------------------------------------------------ the editor

  fillClasses(run, chosen) {
    this.classSelect.replaceChildren();
    for (const name of run.classes) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === chosen;
      this.classSelect.append(option);
    }
  }

  startCorrect(row) {
    const predictionId = row.dataset.predictionId;
    const rect = this.predictionRect(predictionId);
    const run = this.runs.get(row.dataset.run);
    const original = { class_name: rect.dataset.class, box: rectBox(rect) };
    this.editing = { kind: "correct", predictionId, runId: run.run_id, original, box: Object.assign({}, original.box) };
    this.fillClasses(run, original.class_name);
    document.getElementById("review-run-label").hidden = true;
    document.getElementById("review-editor-title").textContent =
      "Correct " + original.class_name + " (" + run.version + "): choose the class, drag the box or a corner, or draw it again.";
    this.openEditor();
  }

  startAdd() {
    const first = this.state.runs[0];
    this.editing = { kind: "add", runId: first.run_id, box: null };
    this.runSelect.replaceChildren();
    for (const run of this.state.runs) {
      const option = document.createElement("option");
      option.value = String(run.run_id);
      option.textContent = run.version;
      this.runSelect.append(option);
    }
    this.runSelect.onchange = () => {
      this.editing.runId = Number(this.runSelect.value);
      this.fillClasses(this.runs.get(this.runSelect.value), this.classSelect.value);
    };
    document.getElementById("review-run-label").hidden = this.state.runs.length < 2;
    this.fillClasses(first, first.classes[0]);
    document.getElementById("review-editor-title").textContent =
      "Add a box the model missed: draw it on the image (press, drag, release), then choose its class.";
    this.openEditor();
  }

  openEditor() {
    this.editor.hidden = false;
    this.svg.classList.add("editing");
    this.drawEditBox();
    this.say("", "");
  }

  stopEditing(message) {
    this.editing = null;
    this.drag = null;
    this.editor.hidden = true;
    this.svg.classList.remove("editing");
    const old = this.svg.querySelector(".review-edit");
    if (old) old.remove();
    if (message !== undefined) this.say(message, "");
  }

  drawEditBox() {
    const old = this.svg.querySelector(".review-edit");
    if (old) old.remove();
    const box = this.editing && this.editing.box;
    this.coords.textContent = box ? "Box (px): " + boxText(box) : "No box drawn yet.";
    if (!box) return;
    const group = svgNode("g", { class: "review-edit" });
    const rect = svgNode("rect", { class: "edit", "vector-effect": "non-scaling-stroke" });
    placeRect(rect, box);
    group.append(rect);
    const size = 10 * this.screenScale();
    const corners = { nw: [box.x_min, box.y_min], ne: [box.x_max, box.y_min], sw: [box.x_min, box.y_max], se: [box.x_max, box.y_max] };
    for (const [name, [x, y]] of Object.entries(corners)) {
      group.append(svgNode("rect", {
        class: "handle", "data-corner": name, x: x - size / 2, y: y - size / 2, width: size, height: size,
      }));
    }
    this.svg.append(group);
  }

  toImage(event) {
    const point = this.svg.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const found = point.matrixTransform(this.svg.getScreenCTM().inverse());
    return {
      x: Math.min(this.width, Math.max(0, found.x)),
      y: Math.min(this.height, Math.max(0, found.y)),
    };
  }

  onDown(event) {
    if (!this.editing) return;
    event.preventDefault();
    const at = this.toImage(event);
    const box = this.editing.box;
    const target = event.target;
    if (box && target.classList.contains("handle")) {
      const corner = target.dataset.corner;
      const anchor = { x: corner.includes("w") ? box.x_max : box.x_min, y: corner.includes("n") ? box.y_max : box.y_min };
      this.drag = { mode: "span", anchor };
    } else if (box && target.classList.contains("edit")) {
      this.drag = { mode: "move", from: at, start: Object.assign({}, box) };
    } else {
      this.drag = { mode: "span", anchor: at };
    }
    this.svg.setPointerCapture(event.pointerId);
  }

  onMove(event) {
    if (!this.drag) return;
    const at = this.toImage(event);
    if (this.drag.mode === "move") {
      const start = this.drag.start;
      const w = start.x_max - start.x_min, h = start.y_max - start.y_min;
      const x = Math.min(this.width - w, Math.max(0, start.x_min + at.x - this.drag.from.x));
      const y = Math.min(this.height - h, Math.max(0, start.y_min + at.y - this.drag.from.y));
      this.editing.box = { x_min: x, y_min: y, x_max: x + w, y_max: y + h };
    } else {
      const a = this.drag.anchor;
      const spanned = { x_min: Math.min(a.x, at.x), y_min: Math.min(a.y, at.y), x_max: Math.max(a.x, at.x), y_max: Math.max(a.y, at.y) };
      if (spanned.x_max - spanned.x_min < MIN_SIDE || spanned.y_max - spanned.y_min < MIN_SIDE) return;
      this.editing.box = spanned;
    }
    this.drawEditBox();
  }

  onUp(event) {
    if (!this.drag) return;
    this.onMove(event);
    this.drag = null;
    if (this.svg.hasPointerCapture(event.pointerId)) this.svg.releasePointerCapture(event.pointerId);
  }

  async save() {
    const editing = this.editing;
    if (!editing) return;
    const className = this.classSelect.value;
    if (!editing.box) {
      this.say("Draw the box on the image first.", "error");
      return;
    }
    const box = rounded(editing.box);
    if (editing.kind === "add") {
      const saved = await this.send(
        "/images/" + encodeURIComponent(this.state.image_id) + "/feedback",
        { verdict: "add", class_name: className, box: box, run_id: editing.runId },
        (item) => this.showAdded(item));
      if (saved) this.stopEditing();
      return;
    }
    const body = { verdict: "correct" };
    if (className !== editing.original.class_name) body.class_name = className;
    const before = editing.original.box;
    const moved = ["x_min", "y_min", "x_max", "y_max"].some((key) => Math.abs(box[key] - before[key]) >= 0.01);
    if (moved) body.box = box;
    const saved = await this.send(
      "/predictions/" + encodeURIComponent(editing.predictionId) + "/feedback",
      body, (item) => this.showVerdict(editing.predictionId, item));
    if (saved) this.stopEditing();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const state = reviewState();
  if (state && document.querySelector("svg.overlay")) {
    window.radlakeReview = new Reviewer(state);
  }
});
