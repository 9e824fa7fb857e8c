// Renderer of keypoint models in the exported page: the frame, every point, and a pair of glasses on the
// eyes (or on the first flip pair), scaled and rotated with them: the dog-face filter, in the browser.

function sourceSize(src) {
  return [src.videoWidth || src.naturalWidth || src.width, src.videoHeight || src.naturalHeight || src.height];
}

// Model-input pixels -> source pixels (the inverse of the contract's resize), as {name: {x, y, score}}.
function toSource(row, src, meta) {
  const [H, W] = meta.contract.size;
  const [sw, sh] = sourceSize(src);
  let sx = sw / W, sy = sh / H, ox = 0, oy = 0;
  if (meta.contract.resize === 'center_crop') {
    const scale = Math.max(H, W) / meta.contract.crop_pct / Math.min(sw, sh);
    sx = sy = 1 / scale; ox = (sw - W / scale) / 2; oy = (sh - H / scale) / 2;
  } else if (meta.contract.resize === 'letterbox') {
    const s = Math.min(W / sw, H / sh);
    sx = sy = 1 / s; ox = -(W - sw * s) / 2 / s; oy = -(H - sh * s) / 2 / s;
  }
  const out = {};
  meta.labels.forEach((name, k) => {
    out[name] = { x: row[3 * k] * sx + ox, y: row[3 * k + 1] * sy + oy, score: row[3 * k + 2] };
  });
  return out;
}

// Exponential smoothing across frames, so the sprite does not jitter on a live camera.
const smooth = {};

function draw(src, pts, meta, $) {
  const view = $('overlay');
  const [sw, sh] = sourceSize(src);
  view.width = sw; view.height = sh; view.hidden = false;
  $('view').style.display = 'none';
  $('video').style.display = 'none';
  const g = view.getContext('2d');
  g.drawImage(src, 0, 0, sw, sh);
  for (const [name, p] of Object.entries(pts)) {
    const s = smooth[name];
    smooth[name] = s && src.tagName === 'VIDEO' ? { x: s.x + 0.5 * (p.x - s.x), y: s.y + 0.5 * (p.y - s.y) } : { x: p.x, y: p.y };
  }
  const names = meta.labels;
  const eyes = names.filter((n) => n.toLowerCase().includes('eye'));
  const pair = eyes.length === 2 ? eyes : (meta.keypoints.flip_pairs[0] || []).map((i) => names[i]);
  if (pair.length === 2) {
    const a = smooth[pair[0]], b = smooth[pair[1]];
    const d = Math.hypot(b.x - a.x, b.y - a.y), ang = Math.atan2(b.y - a.y, b.x - a.x);
    g.save();
    g.translate((a.x + b.x) / 2, (a.y + b.y) / 2);
    g.rotate(ang);
    g.lineWidth = Math.max(2, d * 0.08);
    g.strokeStyle = '#111';
    g.fillStyle = 'rgba(20,20,30,0.55)';
    for (const cx of [-d / 2, d / 2]) {
      g.beginPath();
      g.ellipse(cx, 0, d * 0.4, d * 0.27, 0, 0, 2 * Math.PI);
      g.fill(); g.stroke();
    }
    g.beginPath(); g.moveTo(-d * 0.1, -d * 0.05); g.quadraticCurveTo(0, -d * 0.18, d * 0.1, -d * 0.05); g.stroke();
    g.restore();
  }
  g.fillStyle = '#e22';
  const r = Math.max(2, Math.min(sw, sh) / 100);
  for (const p of Object.values(pts)) {
    g.beginPath(); g.arc(p.x, p.y, r, 0, 2 * Math.PI); g.fill();
  }
}

export function render({ output, src, meta, page: $ }) {
  const keypoints = toSource(Array.from(output.data), src, meta);
  draw(src, keypoints, meta, $);
  return { keypoints };
}
