// "Try a sample": the gateway's synthetic sample DICOMs (GET /samples), for a first look
// without a spine radiograph at hand. Each one is analysed like a chosen file; its name
// says synthetic, and so does the control. Hidden when the gateway has no samples.

import { announce, clear, h } from "./dom.js";

async function fetchJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

async function loadSample(sample, button, onFile) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "Preparing…"; // the first one is generated on the gateway (seconds)
  try {
    const response = await fetch(sample.url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    onFile(new File([blob], `synthetic-${sample.name}.dcm`, { type: "application/dicom" }));
  } catch (error) {
    announce(`The sample ${sample.name} could not be loaded (${error.message}).`);
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

export async function initSamples({ container, list, note, onFile }) {
  let listing;
  try {
    listing = await fetchJson("/samples");
  } catch {
    return; // an older gateway, or none: the page works without samples
  }
  if (!listing || !Array.isArray(listing.samples) || !listing.samples.length) return;
  clear(list);
  for (const sample of listing.samples) {
    const button = h("button", {
      type: "button",
      class: ["btn", "btn--ghost", "btn--small", "samples__button"],
      text: `${sample.name} (${sample.label})`,
      "aria-label": `Try the synthetic ${sample.label} sample ${sample.name}`,
      dataset: { testid: "try-sample", sample: sample.name },
    });
    button.addEventListener("click", () => loadSample(sample, button, onFile));
    list.append(button);
  }
  note.textContent = listing.note || "Synthetic phantoms, not patient images.";
  container.hidden = false;
}
