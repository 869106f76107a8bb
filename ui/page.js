// What both pages share.

export const $ = sel => document.querySelector(sel);

// A line in #messages (newest first, at most `keep`), marked with `cls`.
export function say(text, cls = "", keep = 8) {
  const d = document.createElement("div");
  d.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  if (cls) d.className = cls;
  $("#messages").prepend(d);
  while ($("#messages").children.length > keep) $("#messages").lastChild.remove();
}
