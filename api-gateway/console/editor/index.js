// The console's editor and zip support, bundled so that Nimbus serves every byte
// itself (no CDN). Exposes a small API to the console's own modules.
import { EditorView, basicSetup } from "codemirror";
import { python } from "@codemirror/lang-python";
import { javascript } from "@codemirror/lang-javascript";
import { unzipSync, zipSync, strFromU8, strToU8 } from "fflate";

const languages = { python3: python, nodejs: javascript };

// An editor in `parent` holding `text`, highlighted for `runtime`.
export function createEditor(parent, text, runtime) {
  const lang = languages[runtime];
  return new EditorView({
    doc: text,
    extensions: lang ? [basicSetup, lang()] : [basicSetup],
    parent,
  });
}

export function editorText(view) {
  return view.state.doc.toString();
}

// A zip's files as {path: Uint8Array}.
export function unzip(bytes) {
  return unzipSync(bytes);
}

// {path: Uint8Array | string} as zip bytes.
export function zip(files) {
  const out = {};
  for (const [k, v] of Object.entries(files)) {
    out[k] = typeof v === "string" ? strToU8(v) : v;
  }
  return zipSync(out, { level: 6, mtime: new Date("1980-01-02T00:00:00Z") });
}

export { strFromU8, strToU8 };
