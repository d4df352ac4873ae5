// Safe DOM building. Every string goes in as a text node or an attribute value:
// nothing in this project ever parses a string as HTML (no innerHTML & co.).

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") {
      element.textContent = String(value);
    } else if (name === "class") {
      element.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (name === "dataset") {
      for (const [key, v] of Object.entries(value)) element.dataset[key] = String(v);
    } else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "hidden" || name === "checked" || name === "disabled") {
      element[name] = Boolean(value);
    } else if (name === "value") {
      element.value = String(value);
    } else {
      if (/^on/i.test(name)) throw new Error(`refusing inline handler attribute ${name}`);
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

/** Append children: Nodes as they are, strings and numbers as text nodes. */
export function append(parent, children) {
  const list = Array.isArray(children) ? children : [children];
  for (const child of list.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** h("div", {class: "x", text: "..."}, [children]) */
export function h(tag, attrs = {}, children = []) {
  return build(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs = {}, children = []) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

let announceTimer = 0;
/** Say something to screen readers through the page's polite live region. */
export function announce(message) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => { region.textContent = message; }, 50);
}
