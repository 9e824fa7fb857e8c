// Renderer of stylizers in the exported page: the photo or camera frame goes in at its own aspect (its long
// side capped so a phone stays interactive), the stylised picture comes out as uint8 RGB and is drawn on the
// page. A model exported with a fixed size gets exactly that size.

function sourceSize(src) {
  return [src.videoWidth || src.naturalWidth || src.width, src.videoHeight || src.naturalHeight || src.height];
}

// The input size: the source's aspect, long side <= max_side, both sides a multiple of the model's stride.
function inputSize(src, meta) {
  const st = meta.stylize || {};
  if (!meta.dynamic_size) return meta.contract.size;
  const [sw, sh] = sourceSize(src);
  // 512 px keeps a phone's camera loop interactive; predict/filter in Python go up to the bundle's max_side.
  const m = st.multiple || 4, cap = Math.min(st.max_side || 512, 512);
  const s = Math.min(1, cap / Math.max(sw, sh));
  const round = (v) => Math.max(m, Math.round((v * s) / m) * m);
  return [round(sh), round(sw)];
}

export function prepare(src, meta, ctx) {
  const [h, w] = inputSize(src, meta);
  ctx.canvas.width = w; ctx.canvas.height = h;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(src, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  return { rgb, h, w };
}

export function render({ output, src, page: $ }) {
  const [, h, w] = output.dims;  // (1, H, W, 3) uint8
  const view = $('overlay');
  view.width = w; view.height = h; view.hidden = false;
  $('view').style.display = 'none';
  $('video').style.display = 'none';
  const img = view.getContext('2d').createImageData(w, h);
  for (let i = 0, j = 0; j < output.data.length; i += 4, j += 3) {
    img.data[i] = output.data[j]; img.data[i + 1] = output.data[j + 1]; img.data[i + 2] = output.data[j + 2];
    img.data[i + 3] = 255;
  }
  view.getContext('2d').putImageData(img, 0, 0);
  $('result').textContent = '';
  let sum = 0;
  for (let j = 0; j < output.data.length; j += 97) sum += output.data[j];
  return { width: w, height: h, checksum: sum };
}
