// One analysed file: diagnosis, ensemble members, image with detections, metadata, bundle.
// Every value from the server is inserted as text (see dom.js).

import { downloadDicomSr } from "./api.js";
import { h, announce } from "./dom.js";
import { classColor, dicomDate, ms, percent, prob } from "./format.js";
import { createViewer } from "./viewer.js";

let resultCount = 0;

const METADATA_LABELS = {
  patient_id: "Patient ID",
  study_date: "Study date",
  modality: "Modality",
  rows: "Rows",
  columns: "Columns",
  photometric_interpretation: "Photometric interpretation",
  transfer_syntax: "Transfer syntax",
  transfer_syntax_uid: "Transfer syntax UID",
  bits_stored: "Bits stored",
};

const MEMBER_LABELS = {
  densenet121: "DenseNet121",
  resnet50: "ResNet50",
  efficientnetv2: "EfficientNetV2-S",
};

function num(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function str(value) {
  return value === null || value === undefined ? "" : String(value);
}

/** True when the result comes from weights that are not a medical model. */
export function isDemoResult(result) {
  const kind = result && result.model_bundle && result.model_bundle.kind;
  return Boolean(result && (result.demo || (result.model_bundle && result.model_bundle.demo)))
    || kind === "demo" || kind === "untrained";
}

/**
 * Build the result view. Returns {element, destroy}.
 * @param {object} result  the /upload JSON
 * @param {string} fileName the local file name (for labels)
 * @param {{file?: File}} [options] the uploaded file, for "Download DICOM SR"
 */
export function renderResult(result, fileName, { file = null } = {}) {
  const uid = `r${++resultCount}`;
  const threshold = num(result.threshold) ?? 0.5;
  const probability = num(result.abnormal_probability);
  const diagnosis = str(result.diagnosis);
  const abnormal = diagnosis === "Abnormal";

  const children = [];

  if (isDemoResult(result)) children.push(demoBanner(result));

  // ----------------------------------------------------------- left: image
  const geometry = result.image || {};
  const scaleX = num(geometry.scale_x) ?? 1;
  const scaleY = num(geometry.scale_y) ?? 1;
  const detections = Array.isArray(result.detections) ? result.detections : null;
  const boxes = (detections || []).map((d, index) => {
    const [x1, y1, x2, y2] = Array.isArray(d.bbox) ? d.bbox.map(Number) : [0, 0, 0, 0];
    const classId = Number.isInteger(d.class_id) ? d.class_id : -1;
    const className = str(d.class);
    return {
      index,
      classId,
      className,
      confidence: num(d.confidence) ?? 0,
      color: classColor(classId, className),
      x1: x1 * scaleX,
      y1: y1 * scaleY,
      x2: x2 * scaleX,
      y2: y2 * scaleY,
      original: [x1, y1, x2, y2],
    };
  });

  let viewer = null;
  let imagePanel;
  const canonicalSrc = typeof result.canonical_image === "string"
    && result.canonical_image.startsWith("data:image/") ? result.canonical_image : null;
  const width = num(geometry.canonical_width);
  const height = num(geometry.canonical_height);
  if (canonicalSrc && width && height) {
    viewer = createViewer({
      src: canonicalSrc,
      width,
      height,
      boxes,
      label: `Canonical image of ${fileName} as the models saw it, with detections`,
    });
    imagePanel = h("div", { class: "result__image" }, [viewer.element, geometryNote(geometry)]);
  } else {
    imagePanel = h("div", { class: "result__image result__image--missing" }, [
      h("p", { text: "The gateway returned no canonical image for this file." }),
    ]);
  }

  // ----------------------------------------------------------- right: panel
  const panel = h("div", { class: "result__panel" });

  panel.append(h("section", { class: ["verdict", abnormal ? "verdict--abnormal" : "verdict--normal"], "aria-label": "Diagnosis" }, [
    h("div", { class: "verdict__row" }, [
      h("p", { class: "verdict__label", text: diagnosis, dataset: { testid: "diagnosis" } }),
      h("p", { class: "verdict__confidence" }, [
        "confidence ",
        h("strong", { text: percent(num(result.confidence)) }),
      ]),
    ]),
    gauge({
      value: probability,
      threshold,
      label: "Ensemble probability of Abnormal",
      className: "gauge--large",
    }),
    h("p", { class: "verdict__numbers" }, [
      "Ensemble probability ",
      h("strong", { class: "mono", text: prob(probability) }),
      " · threshold ",
      h("strong", { class: "mono", text: prob(threshold) }),
      h("span", { class: "muted", text: ` (Abnormal if probability > threshold)` }),
    ]),
  ]));

  const warnings = Array.isArray(result.warnings) ? result.warnings : [];
  if (warnings.length) {
    panel.append(h("section", { class: "warnings", "aria-label": "Warnings" }, [
      h("h4", { class: "section-title", text: "Warnings" }),
      h("ul", { class: "warnings__list" }, warnings.map((w) => h("li", { text: str(w) }))),
    ]));
  }

  panel.append(membersSection(result, threshold, uid));

  const detectionControls = detectionsSection(detections, boxes, viewer, uid);
  panel.append(detectionControls);

  const details = h("div", { class: "result__details" }, [
    metadataSection(result.metadata),
    bundleSection(result, file),
  ]);

  const element = h("div", { class: "result", dataset: { diagnosis } }, [
    ...children,
    h("div", { class: "result__grid" }, [imagePanel, panel]),
    details,
  ]);

  return {
    element,
    destroy: () => viewer && viewer.destroy(),
  };
}

// ---------------------------------------------------------------- sections

function demoBanner(result) {
  const bundle = result.model_bundle || {};
  const kind = str(bundle.kind) || "demo";
  const title = kind === "untrained"
    ? "Untrained model bundle: these numbers are meaningless."
    : "Demo model bundle: trained on synthetic phantoms, not a medical result.";
  return h("div", { class: "banner banner--demo", role: "note", dataset: { testid: "demo-banner" } }, [
    h("strong", { text: title }),
    " Bundle: ",
    h("span", { class: "mono", text: str(bundle.name) || "unknown" }),
    ` (${kind}).`,
  ]);
}

function gauge({ value, threshold, label, className = "" }) {
  const v = value ?? 0;
  const fill = h("div", { class: "gauge__fill" });
  fill.style.width = `${Math.max(0, Math.min(1, v)) * 100}%`;
  const tick = h("div", { class: "gauge__threshold", title: `threshold ${prob(threshold)}` });
  tick.style.left = `${Math.max(0, Math.min(1, threshold)) * 100}%`;
  return h("div", {
    class: ["gauge", className, v > threshold ? "gauge--above" : "gauge--below"],
    role: "meter",
    "aria-label": label,
    "aria-valuemin": "0",
    "aria-valuemax": "1",
    "aria-valuenow": String(v),
    "aria-valuetext": `${percent(value)}; threshold ${prob(threshold)}`,
  }, [fill, tick]);
}

function membersSection(result, threshold, uid) {
  const predictions = result.ensemble_prediction && typeof result.ensemble_prediction === "object"
    ? result.ensemble_prediction : {};
  const weights = result.ensemble_weights && typeof result.ensemble_weights === "object"
    ? result.ensemble_weights : {};
  const items = Object.entries(predictions).map(([name, p], i) => {
    const value = num(p);
    const weight = num(weights[name]);
    const labelId = `${uid}-member-${i}`;
    const pretty = MEMBER_LABELS[name];
    return h("li", { class: "member", dataset: { member: name } }, [
      h("div", { class: "member__head" }, [
        h("span", { class: "member__name", id: labelId }, [
          h("span", { class: "mono", text: name }),
          pretty ? h("span", { class: "muted", text: ` ${pretty}` }) : null,
        ]),
        h("span", { class: "member__value mono", text: prob(value) }),
      ]),
      h("div", { class: "member__bar-row" }, [
        (() => {
          const g = gauge({ value, threshold, label: `${name} probability of Abnormal` });
          g.classList.add("member__bar");
          g.setAttribute("aria-labelledby", labelId);
          g.removeAttribute("aria-label");
          return g;
        })(),
        h("span", { class: "member__weight muted", text: weight === null ? "" : `weight ${weight.toFixed(2)}` }),
      ]),
    ]);
  });
  return h("section", { class: "members", "aria-labelledby": `${uid}-members-title` }, [
    h("h4", { class: "section-title", id: `${uid}-members-title`, text: "Ensemble members" }),
    items.length
      ? h("ul", { class: "members__list" }, items)
      : h("p", { class: "muted", text: "No member probabilities returned." }),
  ]);
}

function detectionsSection(detections, boxes, viewer, uid) {
  const section = h("section", { class: "detections", "aria-labelledby": `${uid}-det-title` });
  section.append(h("h4", { class: "section-title", id: `${uid}-det-title`, text: "Detections" }));
  if (detections === null) {
    section.append(h("p", {
      class: "notice notice--warn",
      text: "The detector was unavailable for this file: classification only, no boxes.",
    }));
    return section;
  }
  if (!boxes.length) {
    section.append(h("p", { class: "muted", text: "No lesion boxes were returned." }));
    return section;
  }

  const hiddenClasses = new Set();
  const classes = new Map();
  for (const box of boxes) {
    const entry = classes.get(box.className) || { ...box, count: 0 };
    entry.count += 1;
    classes.set(box.className, entry);
  }
  const sortedClasses = [...classes.values()].sort((a, b) => a.classId - b.classId
    || a.className.localeCompare(b.className));

  const countText = h("p", { class: "detections__count", "aria-live": "polite" });
  const sliderId = `${uid}-conf`;
  const slider = h("input", {
    type: "range",
    id: sliderId,
    class: "slider",
    min: "0",
    max: "1",
    step: "0.01",
    value: "0",
    "aria-describedby": `${uid}-conf-help`,
  });
  const sliderValue = h("output", { class: "mono slider__value", for: sliderId, text: "0.00" });

  const rows = boxes.map((box) => {
    const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = box.color;
    const row = h("tr", { dataset: { index: box.index } }, [
      h("td", { class: "mono", text: String(box.index + 1) }),
      h("td", {}, [swatch, h("span", { text: box.className })]),
      h("td", { class: "mono", text: prob(box.confidence) }),
      h("td", { class: "mono", text: box.original.map((v) => Math.round(v)).join(", ") }),
    ]);
    if (viewer) {
      row.addEventListener("pointerenter", () => viewer.highlight(box.index, true));
      row.addEventListener("pointerleave", () => viewer.highlight(box.index, false));
    }
    return row;
  });

  function update() {
    const min = Number(slider.value);
    sliderValue.textContent = min.toFixed(2);
    slider.setAttribute("aria-valuetext", `above ${min.toFixed(2)}`);
    let visible = 0;
    boxes.forEach((box, i) => {
      const show = box.confidence > min && !hiddenClasses.has(box.className);
      rows[i].hidden = !show;
      if (show) visible += 1;
    });
    if (viewer) viewer.setFilter({ minConfidence: min, hiddenClasses });
    countText.textContent = `${visible} of ${boxes.length} box${boxes.length === 1 ? "" : "es"} shown`;
    section.dataset.visible = String(visible);
  }
  slider.addEventListener("input", update);

  const toggles = sortedClasses.map((entry, i) => {
    const id = `${uid}-class-${i}`;
    const input = h("input", { type: "checkbox", id, checked: true, dataset: { className: entry.className } });
    input.addEventListener("change", () => {
      if (input.checked) hiddenClasses.delete(entry.className);
      else hiddenClasses.add(entry.className);
      update();
    });
    const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = entry.color;
    return h("li", { class: "class-toggle" }, [
      input,
      h("label", { for: id }, [
        swatch,
        h("span", { class: "class-toggle__name", text: entry.className }),
        h("span", { class: "class-toggle__count muted", text: `× ${entry.count}` }),
      ]),
    ]);
  });

  section.append(
    countText,
    h("fieldset", { class: "class-toggles" }, [
      h("legend", { text: "Show classes" }),
      h("ul", {}, toggles),
    ]),
    h("div", { class: "slider-row" }, [
      h("label", { for: sliderId, text: "Minimum confidence" }),
      slider,
      sliderValue,
    ]),
    h("p", {
      class: "muted small",
      id: `${uid}-conf-help`,
      text: "Shows only boxes with confidence above this value. Arrow keys adjust it.",
    }),
    h("details", { class: "detections__table" }, [
      h("summary", { text: `Detection list (${boxes.length})` }),
      h("div", { class: "table-scroll" }, [
        h("table", {}, [
          h("caption", { class: "visually-hidden", text: "Detections, box in original image pixels" }),
          h("thead", {}, [h("tr", {}, [
            h("th", { scope: "col", text: "#" }),
            h("th", { scope: "col", text: "Class" }),
            h("th", { scope: "col", text: "Confidence" }),
            h("th", { scope: "col", text: "Box x1, y1, x2, y2 (original px)" }),
          ])]),
          h("tbody", {}, rows),
        ]),
      ]),
    ]),
  );
  update();
  return section;
}

function geometryNote(geometry) {
  const cw = num(geometry.canonical_width);
  const ch = num(geometry.canonical_height);
  const ow = num(geometry.original_width);
  const oh = num(geometry.original_height);
  const sx = num(geometry.scale_x);
  const text = `Canonical image ${cw ?? "?"} × ${ch ?? "?"} px, the grey image the models saw `
    + `(original ${ow ?? "?"} × ${oh ?? "?"} px, scale ${sx === null ? "?" : sx.toFixed(3)}). `
    + "Boxes are drawn by this page from the returned detections.";
  return h("p", { class: "result__geometry muted small", text });
}

function metadataSection(metadata) {
  const data = metadata && typeof metadata === "object" ? metadata : {};
  const keys = [...Object.keys(METADATA_LABELS).filter((k) => k in data),
    ...Object.keys(data).filter((k) => !(k in METADATA_LABELS))];
  const list = h("dl", { class: "kv" });
  for (const key of keys) {
    let value = data[key];
    if (key === "study_date") value = dicomDate(value);
    const shown = value === null || value === undefined || value === "" ? "—" : str(value);
    list.append(h("div", { class: "kv__row", dataset: { key } }, [
      h("dt", { text: METADATA_LABELS[key] || key }),
      h("dd", { class: key === "transfer_syntax_uid" || key === "patient_id" ? "mono" : "", text: shown }),
    ]));
  }
  return h("section", { class: "panel-box", "aria-label": "DICOM metadata" }, [
    h("h4", { class: "section-title", text: "DICOM metadata" }),
    h("p", { class: "muted small", text: "As returned by the gateway; the patient ID is pseudonymised unless the operator configured otherwise." }),
    list,
  ]);
}

function bundleSection(result, file) {
  const bundle = result.model_bundle || {};
  const fusion = result.fusion || {};
  const timings = result.timings_ms || {};
  const checkpoints = bundle.checkpoints && typeof bundle.checkpoints === "object" ? bundle.checkpoints : {};
  const kind = str(bundle.kind);

  const rows = [
    ["Bundle", h("span", {}, [
      h("span", { class: "mono", text: str(bundle.name) || "unknown" }),
      " ",
      h("span", { class: ["badge", `badge--${kind === "user" ? "user" : "demo"}`], text: kind || "unknown" }),
    ])],
    ["Fusion", `${str(fusion.mode) || "?"} mode; detector threshold ${prob(num(fusion.detector_threshold), 2)}; `
      + `${num(fusion.boxes_suppressed) ?? 0} box(es) suppressed`],
    ["Timings", ["decode", "classify", "detect", "merge", "render", "total"]
      .filter((k) => k in timings)
      .map((k) => `${k} ${ms(timings[k])}`)
      .join(" · ")],
    ["Request ID", h("span", { class: "mono", text: str(result.request_id) })],
  ];
  const list = h("dl", { class: "kv" }, rows.map(([label, value]) => h("div", { class: "kv__row" }, [
    h("dt", { text: label }),
    h("dd", {}, [value instanceof Node ? value : str(value)]),
  ])));

  const entries = Object.entries(checkpoints);
  const checkpointList = h("ul", { class: "checkpoints" }, entries.map(([path, sha]) => h("li", {}, [
    h("span", { class: "checkpoints__path", text: path }),
    h("span", { class: "mono muted", title: `sha256 ${str(sha)}`, text: str(sha).slice(0, 12) }),
  ])));

  const download = h("button", {
    type: "button",
    class: "btn btn--ghost btn--small",
    text: "Download JSON",
    onclick: () => downloadJson(result),
  });

  return h("section", { class: "panel-box", "aria-label": "Model bundle" }, [
    h("h4", { class: "section-title", text: "Model bundle" }),
    list,
    entries.length ? h("details", { class: "checkpoints__details" }, [
      h("summary", { text: `Checkpoints (${entries.length}) with sha256` }),
      checkpointList,
    ]) : null,
    h("div", { class: "panel-box__actions" }, [
      download, file ? dicomSrButton(result, file) : null, viewerLink(result),
    ]),
  ]);
}

/**
 * "Open in viewer": the study in the DICOMweb viewer of VIEWER_URL (the reading room's
 * OHIF), when the gateway gave a link. Only an http(s) URL becomes a link.
 */
export function viewerLink(result) {
  let url;
  try {
    url = new URL(str(result.viewer_url));
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  return h("a", {
    class: "btn btn--ghost btn--small",
    href: url.href,
    target: "_blank",
    rel: "noopener noreferrer",
    text: "Open in viewer",
    title: "This study in the DICOMweb viewer (VIEWER_URL), with the results the PACS holds",
  });
}

/** "Download DICOM SR": the same file through /upload/dicom?parts=sr (one bare SR object). */
function dicomSrButton(result, file) {
  const button = h("button", {
    type: "button",
    class: "btn btn--ghost btn--small",
    text: "Download DICOM SR",
    title: "A TID 1500 Structured Report of this result, for a PACS or viewer (re-analyses the file)",
    onclick: async () => {
      button.disabled = true;
      button.textContent = "Writing DICOM SR…";
      try {
        const blob = await downloadDicomSr(file);
        saveBlob(blob, `${str(result.request_id) || "result"}-sr.dcm`);
        announce("DICOM SR downloaded.");
      } catch (error) {
        announce(`DICOM SR failed: ${error.message}`);
        button.title = error.message;
      } finally {
        button.disabled = false;
        button.textContent = "Download DICOM SR";
      }
    },
  });
  return button;
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function downloadJson(result) {
  const copy = { ...result, canonical_image: result.canonical_image ? "(omitted)" : result.canonical_image };
  const blob = new Blob([JSON.stringify(copy, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: `${str(result.request_id) || "result"}.json` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
  announce("Result JSON downloaded.");
}
