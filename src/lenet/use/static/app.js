// lenet's page: draw or drop a picture, POST it to /predict, show what the model saw
// and the probability of every class. Plain browser JavaScript, nothing to build.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
// A stroke as thick as MNIST's: about 1/10 of the digit's height (2-3 px in a 20 px box).
const STROKE = 22;
let model = null;
let drawing = false;
let inked = false;
let predictions = 0;

function clearCanvas() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  inked = false;
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  canvas.setPointerCapture(event.pointerId);
  const [x, y] = point(event);
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = STROKE;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.arc(x, y, STROKE / 2, 0, 2 * Math.PI);  // a dot even if the pointer does not move
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(x, y);
  inked = true;
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  ctx.lineTo(x, y);
  ctx.stroke();
  ctx.beginPath();
  ctx.moveTo(x, y);
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, () => { drawing = false; });
}

function showTab(name) {
  for (const tab of ["draw", "upload"]) {
    $("tab-" + tab).setAttribute("aria-selected", String(tab === name));
    $("pane-" + tab).hidden = tab !== name;
  }
}
$("tab-draw").addEventListener("click", () => showTab("draw"));
$("tab-upload").addEventListener("click", () => showTab("upload"));

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function drawBars(classes, probabilities, best) {
  const list = $("bars");
  list.replaceChildren();
  classes.forEach((name, i) => {
    const p = probabilities ? probabilities[name] : 0;
    const row = document.createElement("li");
    if (i === best) row.className = "top";
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
    row.querySelector(".name").textContent = name;
    row.querySelector(".name").title = name;
    row.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    row.querySelector(".pct").textContent = probabilities ? (100 * p).toFixed(1) + "%" : "";
    row.dataset.probability = String(p);
    list.appendChild(row);
  });
}

async function send(blob, filename) {
  showError("");
  $("predict").disabled = true;
  const form = new FormData();
  form.append("image", blob, filename);
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      $("label").textContent = "\u2013";
      $("confidence").textContent = "";
      showError(body.detail || "the server refused the picture (" + response.status + ")");
      return;
    }
    $("label").textContent = body.label;
    $("label").classList.toggle("long", body.label.length > 4);
    $("confidence").textContent = (100 * body.confidence).toFixed(1) + "% sure"
      + (body.inverted ? " \u00b7 dark on light: inverted" : "");
    $("model-input").src = body.input_image;
    $("model-input").hidden = false;
    drawBars(body.classes, body.probabilities, body.index);
  } catch (err) {
    showError("no answer from the server: " + err.message);
  } finally {
    $("predict").disabled = false;
    predictions += 1;
    document.body.dataset.predictions = String(predictions);  // tests wait on this
  }
}

$("predict").addEventListener("click", () => {
  if (!inked) {
    showError("Draw something first.");
    return;
  }
  canvas.toBlob((blob) => send(blob, "drawing.png"), "image/png");
});
$("clear").addEventListener("click", () => {
  clearCanvas();
  showError("");
});

function usePicture(file) {
  if (!file) return;
  showTab("upload");
  const limit = model && model.limits.max_upload_bytes;
  if (limit && file.size > limit) {
    showError("This file is " + (file.size / 2 ** 20).toFixed(1) + " MB; the limit is "
      + (limit / 2 ** 20).toFixed(0) + " MB.");
    return;
  }
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  send(file, file.name);
}

$("file").addEventListener("change", (event) => usePicture(event.target.files[0]));
$("drop").addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file").click(); }
});
// Drop anywhere on the page; the drop zone lights up.
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  $("drop").classList.add("over");
});
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) $("drop").classList.remove("over");
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  usePicture(event.dataTransfer.files[0]);
});

async function loadModel() {
  try {
    const response = await fetch("/model");
    model = await response.json();
  } catch (err) {
    $("model-info").textContent = "cannot reach the server: " + err.message;
    return;
  }
  const accuracy = model.accuracy == null ? "" : " \u00b7 test accuracy " + (100 * model.accuracy).toFixed(2) + "%";
  $("model-info").textContent = model.model + " trained on " + model.dataset + accuracy;
  document.title = "lenet: " + model.dataset;
  drawBars(model.classes, null, -1);
  const input = model.input || {};
  const framing = input.framing || model.dataset;
  if (input.size) {
    const shape = input.size + "\u00d7" + input.size + (input.channels === 3 ? " RGB" : "");
    $("input-size").textContent = shape;
    $("model-input").alt = "the " + shape + " image the model saw";
  }
  // Digits are drawn; clothes are photographed (or drawn as an outline, filled in); own data: its classes.
  $("draw-hint").textContent = framing === "mnist"
    ? "Draw one digit, large and centred, like on a form."
    : framing === "fashion-mnist"
      ? "Draw one piece of clothing (" + model.classes.join(", ") + "), filled in, large and centred."
      : "Draw or upload one of: " + model.classes.join(", ") + ".";
  showTab(framing === "mnist" ? "draw" : "upload");
  document.body.dataset.ready = "true";
}

clearCanvas();
loadModel();
