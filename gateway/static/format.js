// Number, size and label formatting, plus the per-class box colours.

export function percent(p, digits = 1) {
  if (typeof p !== "number" || !Number.isFinite(p)) return "–";
  return `${(p * 100).toFixed(digits)}%`;
}

export function prob(p, digits = 3) {
  if (typeof p !== "number" || !Number.isFinite(p)) return "–";
  return p.toFixed(digits);
}

export function bytes(n) {
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function ms(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

/** DICOM DA "YYYYMMDD" -> "YYYY-MM-DD"; anything else is shown as it came. */
export function dicomDate(value) {
  if (typeof value === "string" && /^\d{8}$/.test(value)) {
    return `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6, 8)}`;
  }
  return value;
}

// Distinct, bright on a dark grey image, and each readable against black text.
// Indexed by class id: the class names come from the checkpoint, never from here.
const PALETTE = [
  "#ffb020", // 0
  "#3cc8ff", // 1
  "#ff5fa2", // 2
  "#8ee03c", // 3
  "#b79bff", // 4
  "#ff7a45", // 5
  "#2ee6c4", // 6
  "#ffe14d",
  "#ff9de2",
  "#7aa7ff",
];

export function classColor(classId, className) {
  let index = Number.isInteger(classId) && classId >= 0 ? classId : -1;
  if (index < 0) {
    index = 0;
    for (const ch of String(className)) index = (index * 31 + ch.charCodeAt(0)) >>> 0;
  }
  return PALETTE[index % PALETTE.length];
}
