// radlake web page: progressive enhancement only. Every page works without this
// file; it submits filters on change, switches render URLs, toggles boxes and posts
// cohorts and uploads with fetch (the HttpOnly session cookie authenticates them;
// every write also sends the page's CSRF token in X-CSRF-Token).
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function setupFilters() {
  const form = document.getElementById("filters");
  if (!form) return;
  // Leave "any" and empty inputs out of the URL: /ui?modality=MR, not /ui?modality=MR&view=...
  form.addEventListener("submit", () => {
    for (const control of form.querySelectorAll("select, input")) {
      control.disabled = control.value === "";
    }
  });
  for (const select of form.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => form.requestSubmit());
  }
}

function detailOf(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  }
  return "HTTP " + status;
}

async function postJson(url, init) {
  const headers = Object.assign({}, init.headers, { "X-CSRF-Token": csrfToken() });
  const options = Object.assign({ credentials: "same-origin" }, init, { headers: headers });
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    return { ok: false, status: 0, body: { detail: "the server could not be reached" } };
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  return { ok: response.ok, status: response.status, body: body };
}

function setupCohort() {
  const button = document.getElementById("cohort-save");
  if (!button) return;
  const nameInput = document.getElementById("cohort-name");
  const result = document.getElementById("cohort-result");
  const filter = JSON.parse(document.getElementById("cohort-filter").textContent);
  button.addEventListener("click", async () => {
    const name = nameInput.value.trim();
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/.test(name)) {
      result.textContent = "A cohort name is 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit.";
      result.className = "error";
      return;
    }
    button.disabled = true;
    const answer = await postJson("/cohorts", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: name, filter: filter }),
    });
    button.disabled = false;
    result.className = answer.ok ? "ok" : "error";
    result.textContent = answer.ok
      ? "Saved cohort " + answer.body.name + "."
      : "Not saved: " + detailOf(answer.body, answer.status);
  });
}

function setupOverlay() {
  const toggles = document.querySelectorAll("input[data-toggle]");
  const count = document.getElementById("box-count");
  function apply() {
    const chosen = { reader: new Set(), origin: new Set() };
    for (const input of toggles) {
      if (input.checked) chosen[input.dataset.toggle].add(input.value);
    }
    let shown = 0;
    for (const box of document.querySelectorAll("svg.overlay .box")) {
      const visible =
        chosen.reader.has(box.dataset.reader) && chosen.origin.has(box.dataset.origin);
      box.classList.toggle("hidden", !visible);
      shown += visible ? 1 : 0;
    }
    if (count) count.textContent = shown + (shown === 1 ? " box" : " boxes") + " shown";
  }
  for (const input of toggles) input.addEventListener("change", apply);
}

function setupWindows() {
  const image = document.getElementById("rendering");
  if (!image) return;
  const download = document.getElementById("download-rendering");
  for (const link of document.querySelectorAll("a.preset")) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      const base = image.dataset.base;
      const url = link.dataset.window
        ? base + "?" + new URLSearchParams({ window: link.dataset.window }).toString()
        : base;
      image.src = url;
      if (download) download.href = url;
      for (const other of document.querySelectorAll("a.preset")) {
        other.classList.toggle("active", other === link);
      }
      history.replaceState(null, "", link.href);
    });
  }
}

function setupUpload() {
  const form = document.getElementById("upload");
  if (!form) return;
  const result = document.getElementById("upload-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    result.className = "result";
    result.textContent = "Uploading…";
    const answer = await postJson("/images", { method: "POST", body: new FormData(form) });
    button.disabled = false;
    result.textContent = "";
    if (answer.ok) {
      result.className = "result ok";
      const link = document.createElement("a");
      link.href = "/ui/images/" + encodeURIComponent(answer.body.id);
      link.textContent = "image " + answer.body.id;
      result.append("Catalogued as ", link, " (" + answer.body.format + ").");
    } else {
      result.className = "result error";
      result.textContent = "Rejected (" + answer.status + "): " + detailOf(answer.body, answer.status);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupFilters();
  setupCohort();
  setupOverlay();
  setupWindows();
  setupUpload();
});
