// JSON handled as text: payloads are shown exactly as stored, with no round trip through
// JavaScript numbers (which would print -0.0 as 0 and round 9223372036854775807).
"use strict";

const RawJSON = (() => {
  // Calls visit(i, ch, depth) for every character outside strings; returns nothing.
  function scan(text, visit) {
    let depth = 0;
    for (let i = 0; i < text.length; i++) {
      const ch = text[i];
      if (ch === '"') {
        const start = i;
        for (i++; i < text.length && text[i] !== '"'; i++) {
          if (text[i] === "\\") i++;
        }
        visit(start, '"', depth, i);
        continue;
      }
      if (ch === "{" || ch === "[") { visit(i, ch, depth, i); depth++; continue; }
      if (ch === "}" || ch === "]") { depth--; visit(i, ch, depth, i); continue; }
      visit(i, ch, depth, i);
    }
  }

  // The raw texts of the elements of a top-level array.
  function splitArray(text) {
    const out = [];
    let start = -1;
    scan(text, (i, ch, depth) => {
      if (depth === 0 && ch === "[") start = i + 1;
      else if (depth === 1 && ch === ",") { out.push(text.slice(start, i)); start = i + 1; }
      else if (depth === 0 && ch === "]") {
        const last = text.slice(start, i);
        if (last.trim()) out.push(last);
      }
    });
    return out.map((s) => s.trim());
  }

  // The raw text of each member of a top-level object, by key.
  function members(text) {
    const out = {};
    let key = null, start = -1, expectKey = true;
    scan(text, (i, ch, depth, end) => {
      if (depth === 1 && ch === '"' && expectKey) {
        key = JSON.parse(text.slice(i, end + 1)); expectKey = false;
      } else if (depth === 1 && ch === ":" && key !== null && start < 0) {
        start = i + 1;
      } else if ((depth === 1 && ch === ",") || (depth === 0 && ch === "}" && start >= 0)) {
        if (key !== null && start >= 0) out[key] = text.slice(start, i).trim();
        key = null; start = -1; expectKey = true;
      }
    });
    return out;
  }

  // The same JSON indented by two spaces; strings and numbers untouched.
  function pretty(text) {
    let out = "", indent = 0;
    const nl = () => "\n" + "  ".repeat(indent);
    scan(text, (i, ch, depth, end) => {
      if (ch === '"') { out += text.slice(i, end + 1); return; }
      if (ch === " " || ch === "\n" || ch === "\r" || ch === "\t") return;
      if (ch === "{" || ch === "[") {
        const close = ch === "{" ? "}" : "]";
        // An empty container stays on one line.
        let j = i + 1;
        while (j < text.length && " \n\r\t".includes(text[j])) j++;
        if (text[j] === close) { out += ch; return; }
        indent++; out += ch + nl(); return;
      }
      if (ch === "}" || ch === "]") {
        if (out.endsWith("{") || out.endsWith("[")) { out += ch; return; }
        indent--; out += nl() + ch; return;
      }
      if (ch === ",") { out += "," + nl(); return; }
      if (ch === ":") { out += ": "; return; }
      out += ch;
    });
    return out;
  }

  return { splitArray, members, pretty };
})();
