// The gateway's HTTP API, as used by the page.

export const UPLOAD_URL = "/upload?annotate=false&canonical_image=true";
export const DICOM_SR_URL = "/upload/dicom?parts=sr";

const API_KEY_STORAGE = "spine-lesion-service.api-key";
let memoryKey = ""; // used when session storage is unavailable

/** The API key for this browser tab, when the operator requires one (sessionStorage only). */
export function getApiKey() {
  try {
    return sessionStorage.getItem(API_KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
    else sessionStorage.removeItem(API_KEY_STORAGE);
  } catch {
    // storage disabled: the key lasts until the page is reloaded
  }
  memoryKey = key || "";
}

/** A failed request: the API's own message when it sent one. */
export class ApiError extends Error {
  constructor(message, { status = 0, requestId = null, kind = "http" } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.requestId = requestId;
    this.kind = kind; // "http" | "network" | "timeout" | "abort" | "parse"
  }
}

const STATUS_TEXT = {
  400: "The file is not a readable DICOM.",
  401: "This gateway requires an API key.",
  413: "The file is larger than the gateway accepts.",
  415: "The upload was not sent as multipart/form-data.",
  422: "The DICOM is valid but cannot be analysed.",
  429: "Too many uploads; retry in a moment.",
  500: "The gateway failed unexpectedly.",
  502: "A proxy could not reach the gateway.",
  503: "A model service is unavailable; try again shortly.",
  504: "A model service did not answer in time.",
};

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * Upload one file. Returns {promise, abort}.
 * onProgress(fraction) while the body is sent; onSent() once it is all sent.
 */
export function uploadDicom(file, { onProgress, onSent, timeoutMs = 300000 } = {}) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("POST", UPLOAD_URL);
    xhr.responseType = "text";
    xhr.timeout = timeoutMs;
    xhr.setRequestHeader("Accept", "application/json");
    const key = getApiKey() || memoryKey;
    if (key) xhr.setRequestHeader("X-API-Key", key);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    });
    xhr.upload.addEventListener("load", () => onSent && onSent());
    xhr.addEventListener("load", () => {
      const body = parseJson(xhr.responseText);
      const requestId = (body && body.request_id) || xhr.getResponseHeader("X-Request-ID");
      if (xhr.status >= 200 && xhr.status < 300 && body && body.status === "success") {
        resolve(body);
        return;
      }
      let message;
      if (body && typeof body.message === "string" && body.message) {
        message = body.message;
      } else if (xhr.status >= 200 && xhr.status < 300) {
        message = "The gateway sent a response this page cannot read.";
      } else {
        message = STATUS_TEXT[xhr.status] || `The gateway answered HTTP ${xhr.status}.`;
      }
      reject(new ApiError(message, { status: xhr.status, requestId, kind: body ? "http" : "parse" }));
    });
    xhr.addEventListener("error", () =>
      reject(new ApiError("Network error: the gateway could not be reached.", { kind: "network" })));
    xhr.addEventListener("timeout", () =>
      reject(new ApiError("No answer from the gateway in time.", { kind: "timeout" })));
    xhr.addEventListener("abort", () =>
      reject(new ApiError("Upload cancelled.", { kind: "abort" })));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}

/** POST /upload/dicom?parts=sr: the file's DICOM SR as a Blob, or throws ApiError. */
export async function downloadDicomSr(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const headers = { Accept: "application/dicom" };
  const key = getApiKey() || memoryKey;
  if (key) headers["X-API-Key"] = key;
  let response;
  try {
    response = await fetch(DICOM_SR_URL, { method: "POST", body: form, headers });
  } catch {
    throw new ApiError("Network error: the gateway could not be reached.", { kind: "network" });
  }
  if (!response.ok) {
    const body = parseJson(await response.text());
    const message = (body && typeof body.message === "string" && body.message)
      || STATUS_TEXT[response.status] || `The gateway answered HTTP ${response.status}.`;
    throw new ApiError(message, { status: response.status });
  }
  return response.blob();
}

/** GET /health; resolves to the JSON body, or throws ApiError. */
export async function fetchHealth() {
  let response;
  try {
    response = await fetch("/health", { headers: { Accept: "application/json" }, cache: "no-store" });
  } catch {
    throw new ApiError("The gateway could not be reached.", { kind: "network" });
  }
  const body = parseJson(await response.text());
  if (!body) throw new ApiError(`Health check answered HTTP ${response.status}.`, { status: response.status });
  if (!response.ok && body.status === "error") {
    throw new ApiError(body.message || `HTTP ${response.status}`, { status: response.status });
  }
  return body;
}
