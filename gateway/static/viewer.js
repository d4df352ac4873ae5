// The image viewer: the canonical image the models saw, detection boxes drawn over it
// as SVG (in canonical pixel coordinates), zoom and pan with mouse, touch and keyboard.

import { h, svg, announce } from "./dom.js";
import { percent } from "./format.js";

const MAX_SCALE = 8; // screen pixels per canonical pixel at the deepest zoom
const ZOOM_STEP = 1.25;
const PAN_STEP = 48;

let viewerCount = 0;

/**
 * @param {object} options
 * @param {string} options.src          data: URI of the canonical image
 * @param {number} options.width        canonical width
 * @param {number} options.height       canonical height
 * @param {Array}  options.boxes        [{index, classId, className, confidence, color, x1, y1, x2, y2}]
 *                                       in canonical pixels
 * @param {string} options.label        accessible name of the image
 */
export function createViewer({ src, width, height, boxes, label }) {
  const id = `viewer-${++viewerCount}`;
  const state = { scale: 1, tx: 0, ty: 0, fit: 1, ready: false, expanded: false };

  const zoomLabel = h("output", { class: "viewer__zoom", "aria-live": "off", text: "100%" });
  const zoomIn = toolButton("Zoom in", "+", () => zoomBy(ZOOM_STEP));
  const zoomOut = toolButton("Zoom out", "−", () => zoomBy(1 / ZOOM_STEP));
  const fitButton = toolButton("Fit image to view", "Fit", () => fit());
  const actualButton = toolButton("Actual size (one image pixel per screen pixel)", "1:1", () => zoomTo(1));
  const expandButton = toolButton("Open full view", "Full view", () => setExpanded(!state.expanded));
  expandButton.classList.add("viewer__expand");
  expandButton.setAttribute("aria-pressed", "false");

  const toolbar = h("div", { class: "viewer__toolbar", role: "toolbar", "aria-label": "Image view" }, [
    zoomOut, zoomLabel, zoomIn, fitButton, actualButton, h("span", { class: "viewer__spacer" }), expandButton,
  ]);

  const image = h("img", {
    class: "viewer__image",
    src,
    alt: label,
    width,
    height,
    draggable: "false",
    decoding: "async",
  });

  const overlay = svg("svg", {
    class: "viewer__overlay",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    "aria-label": `${boxes.length} detection box${boxes.length === 1 ? "" : "es"}`,
    role: "group",
  });
  const boxElements = boxes.map((box) => drawBox(box));
  overlay.append(...boxElements);

  const stage = h("div", { class: "viewer__stage" }, [image, overlay]);
  stage.style.width = `${width}px`;
  stage.style.height = `${height}px`;

  const tooltip = h("div", { class: "viewer__tooltip", role: "tooltip", id: `${id}-tip`, hidden: true });
  const hintId = `${id}-hint`;
  const viewport = h("div", {
    class: "viewer__viewport",
    tabindex: "0",
    role: "group",
    "aria-roledescription": "image viewer",
    "aria-label": label,
    "aria-describedby": hintId,
  }, [stage, tooltip]);

  const hint = h("p", {
    class: "viewer__hint",
    id: hintId,
    text: "Drag to pan. Ctrl + wheel (wheel in full view), + and − zoom; arrow keys pan; 0 fits. "
      + "Hover or focus a box for its label.",
  });

  const element = h("figure", { class: "viewer", id }, [toolbar, viewport, hint]);

  // ---------------------------------------------------------------- boxes

  function drawBox(box) {
    const text = `${box.className}: ${percent(box.confidence)}`;
    const rect = svg("rect", {
      x: box.x1,
      y: box.y1,
      width: Math.max(box.x2 - box.x1, 0),
      height: Math.max(box.y2 - box.y1, 0),
      stroke: box.color,
      "vector-effect": "non-scaling-stroke",
    });
    const group = svg("g", {
      class: "det",
      tabindex: "0",
      role: "img",
      "aria-label": text,
      dataset: { index: box.index, classId: box.classId, confidence: box.confidence },
    }, [svg("title", { text }), rect]);
    group.detection = box;
    group.addEventListener("pointerenter", () => showTip(group));
    group.addEventListener("pointerleave", hideTip);
    group.addEventListener("focus", () => showTip(group));
    group.addEventListener("blur", hideTip);
    return group;
  }

  function showTip(group) {
    const box = group.detection;
    tooltip.replaceChildren(
      swatch(box.color),
      h("span", { class: "viewer__tip-class", text: box.className }),
      h("span", { class: "viewer__tip-conf", text: percent(box.confidence) }),
    );
    tooltip.hidden = false;
    const vp = viewport.getBoundingClientRect();
    const r = group.getBoundingClientRect();
    const tipWidth = tooltip.offsetWidth;
    let left = Math.min(Math.max(r.left - vp.left, 4), vp.width - tipWidth - 4);
    let top = r.top - vp.top - tooltip.offsetHeight - 6;
    if (top < 4) top = Math.min(r.bottom - vp.top + 6, vp.height - tooltip.offsetHeight - 4);
    tooltip.style.left = `${Math.max(left, 4)}px`;
    tooltip.style.top = `${Math.max(top, 4)}px`;
    group.classList.add("is-active");
    highlightListeners.forEach((fn) => fn(box.index, true));
  }

  function hideTip() {
    tooltip.hidden = true;
    for (const g of boxElements) g.classList.remove("is-active");
    highlightListeners.forEach((fn) => fn(null, false));
  }

  const highlightListeners = [];

  /** Show only boxes with confidence above minConfidence whose class is not in hiddenClasses. */
  function setFilter({ minConfidence = 0, hiddenClasses = new Set() } = {}) {
    let visible = 0;
    for (const g of boxElements) {
      const box = g.detection;
      const show = box.confidence > minConfidence && !hiddenClasses.has(box.className);
      g.classList.toggle("is-hidden", !show);
      g.setAttribute("aria-hidden", show ? "false" : "true");
      if (show) visible += 1;
    }
    overlay.dataset.visible = String(visible);
    overlay.setAttribute("aria-label", `${visible} of ${boxElements.length} detection boxes shown`);
    if (!tooltip.hidden) hideTip();
    return visible;
  }

  /** Emphasise one box (from the detections table). */
  function highlight(index, on) {
    for (const g of boxElements) g.classList.toggle("is-active", on && g.detection.index === index);
  }

  // ------------------------------------------------------------- geometry

  function viewportSize() {
    return { w: viewport.clientWidth, h: viewport.clientHeight };
  }

  function minScale() {
    return Math.min(state.fit, 1);
  }

  function maxScale() {
    return Math.max(MAX_SCALE, state.fit);
  }

  function clampPan() {
    const { w, h: vh } = viewportSize();
    const sw = width * state.scale;
    const sh = height * state.scale;
    state.tx = sw <= w ? (w - sw) / 2 : Math.min(0, Math.max(w - sw, state.tx));
    state.ty = sh <= vh ? (vh - sh) / 2 : Math.min(0, Math.max(vh - sh, state.ty));
  }

  function apply() {
    clampPan();
    stage.style.transform = `translate(${state.tx}px, ${state.ty}px) scale(${state.scale})`;
    const relative = state.scale / state.fit;
    zoomLabel.textContent = `${Math.round(relative * 100)}%`;
    zoomLabel.setAttribute("title", `${state.scale.toFixed(2)} screen px per image px`);
    element.dataset.zoom = relative.toFixed(3);
    zoomOut.disabled = state.scale <= minScale() + 1e-6;
    zoomIn.disabled = state.scale >= maxScale() - 1e-6;
    if (!tooltip.hidden) hideTip();
  }

  function computeFit() {
    const { w, h: vh } = viewportSize();
    if (!w || !vh) return false;
    state.fit = Math.min(w / width, vh / height);
    return true;
  }

  function fit() {
    if (!computeFit()) return;
    state.scale = state.fit;
    state.tx = 0;
    state.ty = 0;
    apply();
  }

  /** Zoom to an absolute scale, keeping the image point under (cx, cy) in place. */
  function zoomTo(scale, cx, cy) {
    const { w, h: vh } = viewportSize();
    const px = cx ?? w / 2;
    const py = cy ?? vh / 2;
    const next = Math.min(maxScale(), Math.max(minScale(), scale));
    const ix = (px - state.tx) / state.scale;
    const iy = (py - state.ty) / state.scale;
    state.scale = next;
    state.tx = px - ix * next;
    state.ty = py - iy * next;
    apply();
  }

  function zoomBy(factor, cx, cy) {
    zoomTo(state.scale * factor, cx, cy);
  }

  function panBy(dx, dy) {
    state.tx += dx;
    state.ty += dy;
    apply();
  }

  function setExpanded(on) {
    state.expanded = on;
    element.classList.toggle("viewer--expanded", on);
    document.body.classList.toggle("has-expanded-viewer", on);
    expandButton.setAttribute("aria-pressed", on ? "true" : "false");
    expandButton.textContent = on ? "Close full view" : "Full view";
    expandButton.setAttribute("aria-label", on ? "Close full view" : "Open full view");
    announce(on ? "Full view opened. Press Escape to close." : "Full view closed.");
    requestAnimationFrame(() => { fit(); viewport.focus(); });
  }

  // --------------------------------------------------------------- events

  viewport.addEventListener("wheel", (event) => {
    if (!state.expanded && !event.ctrlKey && !event.metaKey) return;
    event.preventDefault();
    const r = viewport.getBoundingClientRect();
    const factor = Math.exp(-event.deltaY * (event.deltaMode === 1 ? 0.05 : 0.0015));
    zoomBy(factor, event.clientX - r.left, event.clientY - r.top);
  }, { passive: false });

  let drag = null;
  viewport.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    drag = { x: event.clientX, y: event.clientY, id: event.pointerId, moved: false };
  });
  viewport.addEventListener("pointermove", (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 3) return;
    if (!drag.moved) {
      drag.moved = true;
      viewport.setPointerCapture(event.pointerId);
      viewport.classList.add("is-dragging");
      hideTip();
    }
    drag.x = event.clientX;
    drag.y = event.clientY;
    panBy(dx, dy);
  });
  const endDrag = (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    if (drag.moved && viewport.hasPointerCapture(event.pointerId)) viewport.releasePointerCapture(event.pointerId);
    viewport.classList.remove("is-dragging");
    drag = null;
  };
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);
  viewport.addEventListener("dblclick", (event) => {
    const r = viewport.getBoundingClientRect();
    if (state.scale > state.fit * 1.01) fit();
    else zoomBy(2.5, event.clientX - r.left, event.clientY - r.top);
  });

  element.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.expanded) {
      event.preventDefault();
      setExpanded(false);
      expandButton.focus();
      return;
    }
    if (event.target !== viewport) return;
    const keys = {
      "+": () => zoomBy(ZOOM_STEP),
      "=": () => zoomBy(ZOOM_STEP),
      "-": () => zoomBy(1 / ZOOM_STEP),
      "_": () => zoomBy(1 / ZOOM_STEP),
      "0": () => fit(),
      ArrowLeft: () => panBy(PAN_STEP, 0),
      ArrowRight: () => panBy(-PAN_STEP, 0),
      ArrowUp: () => panBy(0, PAN_STEP),
      ArrowDown: () => panBy(0, -PAN_STEP),
    };
    const action = keys[event.key];
    if (action && !event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      action();
    }
  });

  // Refit when the viewport changes size, keeping the relative zoom and the centre.
  const resizeObserver = new ResizeObserver(() => {
    const { w, h: vh } = viewportSize();
    if (!w || !vh) return;
    if (!state.ready) {
      state.ready = true;
      fit();
      state.lastW = w;
      state.lastH = vh;
      return;
    }
    const relative = state.scale / state.fit;
    const cx = (state.lastW ?? w) / 2;
    const cy = (state.lastH ?? vh) / 2;
    const ix = (cx - state.tx) / state.scale;
    const iy = (cy - state.ty) / state.scale;
    computeFit();
    state.scale = state.fit * relative;
    state.tx = w / 2 - ix * state.scale;
    state.ty = vh / 2 - iy * state.scale;
    apply();
    state.lastW = w;
    state.lastH = vh;
  });
  resizeObserver.observe(viewport);

  function destroy() {
    resizeObserver.disconnect();
    if (state.expanded) document.body.classList.remove("has-expanded-viewer");
  }

  return {
    element,
    setFilter,
    highlight,
    onHighlight: (fn) => highlightListeners.push(fn),
    destroy,
    zoomBy,
    fit,
  };
}

function swatch(color) {
  const element = h("span", { class: "viewer__tip-swatch", "aria-hidden": "true" });
  element.style.background = color;
  return element;
}

function toolButton(label, text, onClick) {
  return h("button", {
    type: "button",
    class: "viewer__btn",
    "aria-label": label,
    title: label,
    text,
    onclick: onClick,
  });
}
