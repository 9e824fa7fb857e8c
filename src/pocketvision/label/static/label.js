// pocketvision label: one image at a time, large. Keypoints: each click places the point named at the
// top; after the last one the image is saved and the next (already decoded) image is shown. Classes:
// number keys. Undo Backspace/Ctrl+Z, skip S, not visible V, previous/next arrows, zoom wheel, pan
// space+drag, drag a point to move it, Enter accepts the model's suggestion.
'use strict';
const $ = (id) => document.getElementById(id);
const pv = (window.pv = { switchMs: [], switchReady: [], saved: 0, ready: false });
const canvas = $('view');
const g = canvas.getContext('2d');
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

let S;              // server state: mode, names, images, labels, order, start, suggest
let pos = 0;        // position in S.order
let cur = null;     // {n, name, img, points, asked, history, suggested}
let view = { scale: 1, ox: 0, oy: 0 };
const cache = new Map();  // image index -> Promise<HTMLImageElement> (decoded)
const decoded = new Set();  // indices whose image is decoded: a switch to one of them draws at once
const times = [];   // seconds per labelled image (this session)
let tImage = performance.now(), tSession = performance.now(), labelledHere = 0;
let spaceDown = false, drag = null;

function load(n) {
  if (!cache.has(n)) {
    const img = new Image();
    img.src = `/api/image/${n}`;
    cache.set(n, img.decode().then(() => { decoded.add(n); return img; }));
  }
  return cache.get(n);
}
function prefetch() {  // the next images are decoded before they are needed: the switch is instant
  for (let k = 1; k <= 4; k++) if (pos + k < S.order.length) load(S.order[pos + k]);
  for (const n of [...cache.keys()]) if (Math.abs(S.order.indexOf(n) - pos) > 8) cache.delete(n);
}

function needed() {  // names still to answer on this image, in order
  return S.names.filter((nm) => !cur.asked.includes(nm));
}

function fit() {
  const r = canvas.getBoundingClientRect();
  canvas.width = r.width; canvas.height = r.height;
  const s = Math.min(r.width / cur.W, r.height / cur.H);
  view = { scale: s, ox: (r.width - cur.W * s) / 2, oy: (r.height - cur.H * s) / 2 };
}
function toImage(cx, cy) {
  const r = canvas.getBoundingClientRect();
  return [(cx - r.left - view.ox) / view.scale, (cy - r.top - view.oy) / view.scale];
}
pv.toScreen = (x, y) => {  // image pixels -> page coordinates (tests click through this)
  const r = canvas.getBoundingClientRect();
  return [r.left + view.ox + x * view.scale, r.top + view.oy + y * view.scale];
};

function draw() {
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.fillStyle = '#1d1f21';
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.imageSmoothingEnabled = view.scale < 4;
  // Large photos arrive downscaled for display; drawing at the full size keeps every coordinate in
  // full-size pixels.
  g.drawImage(cur.img, view.ox, view.oy, cur.W * view.scale, cur.H * view.scale);
  if (S.mode === 'keypoints') {
    cur.points.forEach((p, k) => {
      if (!p) return;
      const [x, y] = [view.ox + p[0] * view.scale, view.oy + p[1] * view.scale];
      g.beginPath();
      g.arc(x, y, 6, 0, 2 * Math.PI);
      g.fillStyle = COLORS[k % COLORS.length];
      g.globalAlpha = cur.suggested && !cur.asked.includes(S.names[k]) ? 0.5 : 1;
      g.fill();
      g.globalAlpha = 1;
      g.strokeStyle = '#fff'; g.lineWidth = 1.5; g.stroke();
      g.fillStyle = '#fff'; g.font = '12px system-ui';
      g.fillText(S.names[k], x + 8, y - 8);
    });
  }
  const rest = S.mode === 'keypoints' ? needed() : [];
  $('prompt').textContent = S.mode === 'keypoints'
    ? (rest.length ? `click: ${rest[0]}` : (cur.suggested ? 'Enter: accept' : 'done'))
    : `class? ${S.names.map((c, i) => `${i + 1}=${c}`).join('  ')}` + (cur.suggested ? `  (model: ${cur.suggested})` : '');
  $('name').textContent = `${pos + 1}/${S.order.length} ${cur.name}`;
  const done = S.done;
  $('fill').style.width = `${(100 * done) / S.images.length}%`;
  const hours = (performance.now() - tSession) / 3.6e6;
  const per = times.length ? times.slice(-20).reduce((a, b) => a + b, 0) / Math.min(20, times.length) : 0;
  $('stats').textContent = `${done}/${S.images.length} done · ${labelledHere ? Math.round(labelledHere / hours) : 0}/h · ${per.toFixed(1)} s/image`;
}

async function show(p, t0) {
  pos = Math.max(0, Math.min(S.order.length - 1, p));
  const n = S.order[pos], name = S.images[n];
  const ready = decoded.has(n);
  const img = await load(n);
  const lab = S.labels[name];
  const [W, H] = S.sizes[n];
  cur = { n, name, img, W, H, history: [], suggested: null,
    points: lab && lab.points ? lab.points.map((q) => (q ? [...q] : null)) : S.names.map(() => null),
    asked: lab && lab.asked ? [...lab.asked] : [] };
  if (S.mode === 'keypoints' && lab && lab.status === 'skipped') cur.asked = [];
  fit();
  draw();
  if (t0 !== undefined) {
    pv.switchReady.push(ready);
    requestAnimationFrame(() => pv.switchMs.push(performance.now() - t0));
  }
  tImage = performance.now();
  prefetch();
  if (S.suggest && !(lab && lab.status === 'done' && (S.mode === 'classes' || needed().length === 0))) {
    fetch(`/api/suggest/${n}`).then((r) => (r.ok ? r.json() : null)).then((sg) => {
      if (!sg || !cur || cur.n !== n) return;
      if (S.mode === 'keypoints') {
        sg.points.forEach((q, k) => { if (q && !cur.asked.includes(S.names[k])) cur.points[k] = [q[0], q[1], 2]; });
        cur.suggested = true;
      } else cur.suggested = sg.class;
      draw();
    });
  }
}

async function save(body) {
  const r = await fetch('/api/label', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const res = await r.json();
  if (!r.ok) { $('error').textContent = `not saved: ${res.error}`; throw new Error(res.error); }
  $('error').textContent = '';
  S.done = res.done;
  pv.saved += 1;
  return res;
}

function finish(t0) {  // current image complete: record, save (in the background), show the next one
  const body = S.mode === 'keypoints' ? { image: cur.name, points: cur.points, asked: cur.asked } : { image: cur.name, class: cur.cls };
  S.labels[cur.name] = S.mode === 'keypoints' ? { points: cur.points, asked: cur.asked, status: 'done' } : { class: cur.cls, status: 'done' };
  times.push((performance.now() - tImage) / 1000);
  labelledHere += 1;
  pv.pending = save(body).catch(() => {});
  show(pos + 1, t0);
}

function place(x, y, v, t0) {
  const rest = needed();
  if (!rest.length) return;
  const k = S.names.indexOf(rest[0]);
  cur.history.push({ points: cur.points.map((q) => (q ? [...q] : null)), asked: [...cur.asked] });
  cur.points[k] = v ? [Math.round(x * 100) / 100, Math.round(y * 100) / 100, v] : null;
  cur.asked.push(rest[0]);
  if (!needed().length && !cur.suggested) return finish(t0);
  draw();
}

function hit(x, y) {  // index of a drawn point under the cursor
  let best = -1, bd = 10 / view.scale;
  cur.points.forEach((p, k) => { if (p) { const d = Math.hypot(p[0] - x, p[1] - y); if (d < bd) { bd = d; best = k; } } });
  return best;
}

canvas.addEventListener('mousedown', (e) => {
  if (!cur) return;
  const t0 = performance.now();
  const [x, y] = toImage(e.clientX, e.clientY);
  if (spaceDown || e.button === 1) { drag = { pan: true, x: e.clientX, y: e.clientY }; return; }
  if (S.mode !== 'keypoints') return;
  const k = hit(x, y);
  if (k >= 0 && (cur.asked.includes(S.names[k]) || cur.suggested)) {
    cur.history.push({ points: cur.points.map((q) => (q ? [...q] : null)), asked: [...cur.asked] });
    drag = { point: k };
    return;
  }
  if (x < 0 || y < 0 || x > cur.W || y > cur.H) return;
  place(x, y, 2, t0);
});
window.addEventListener('mousemove', (e) => {
  if (!drag) return;
  if (drag.pan) {
    view.ox += e.clientX - drag.x; view.oy += e.clientY - drag.y;
    drag.x = e.clientX; drag.y = e.clientY;
  } else {
    const [x, y] = toImage(e.clientX, e.clientY);
    const p = cur.points[drag.point];
    p[0] = Math.min(Math.max(0, x), cur.W); p[1] = Math.min(Math.max(0, y), cur.H);
    drag.moved = true;
  }
  draw();
});
window.addEventListener('mouseup', () => {
  const d = drag;
  drag = null;
  if (d && d.moved && !cur.suggested && needed().length === 0) {  // moved a point of a finished image: save it
    S.labels[cur.name] = { points: cur.points, asked: cur.asked, status: 'done' };
    pv.pending = save({ image: cur.name, points: cur.points, asked: cur.asked }).catch(() => {});
  }
});
canvas.addEventListener('wheel', (e) => {
  e.preventDefault();
  const r = canvas.getBoundingClientRect();
  const f = Math.exp(-e.deltaY * 0.0015);
  const cx = e.clientX - r.left, cy = e.clientY - r.top;
  view.ox = cx - (cx - view.ox) * f; view.oy = cy - (cy - view.oy) * f; view.scale *= f;
  draw();
}, { passive: false });

window.addEventListener('keydown', (e) => {
  if (!cur) return;
  const t0 = performance.now();
  if (e.key === ' ') { spaceDown = true; canvas.style.cursor = 'grab'; e.preventDefault(); return; }
  if (e.key === 'Backspace' || (e.key === 'z' && (e.ctrlKey || e.metaKey))) {
    e.preventDefault();
    const h = cur.history.pop();
    if (h) { cur.points = h.points; cur.asked = h.asked; draw(); }
    return;
  }
  if (e.key === 's' || e.key === 'S') {
    S.labels[cur.name] = S.mode === 'keypoints' ? { points: S.names.map(() => null), asked: [], status: 'skipped' } : { class: null, status: 'skipped' };
    pv.pending = save({ image: cur.name, skip: true }).catch(() => {});
    return show(pos + 1, t0);
  }
  if ((e.key === 'v' || e.key === 'V') && S.mode === 'keypoints') return place(0, 0, 0, t0);
  if (e.key === 'ArrowRight') return show(pos + 1, t0);
  if (e.key === 'ArrowLeft') return show(pos - 1, t0);
  if (e.key === 'Enter' && cur.suggested) {
    if (S.mode === 'keypoints') {
      cur.points.forEach((p, k) => { if (p && !cur.asked.includes(S.names[k])) cur.asked.push(S.names[k]); });
      S.names.forEach((nm) => { if (!cur.asked.includes(nm)) cur.asked.push(nm); });
    } else cur.cls = cur.suggested;
    cur.suggested = null;
    return finish(t0);
  }
  if (S.mode === 'classes' && /^[1-9]$/.test(e.key) && +e.key <= S.names.length) {
    cur.cls = S.names[+e.key - 1];
    return finish(t0);
  }
});
window.addEventListener('keyup', (e) => { if (e.key === ' ') { spaceDown = false; canvas.style.cursor = 'crosshair'; } });
window.addEventListener('resize', () => { if (cur) { fit(); draw(); } });

async function main() {
  S = await (await fetch('/api/state')).json();
  $('help').textContent = S.mode === 'keypoints'
    ? 'click = place · drag a point = move · Backspace/Ctrl+Z undo · V not visible · S skip · ←/→ previous/next · wheel zoom · space+drag pan' + (S.suggest ? ' · Enter accept' : '')
    : 'number keys = class · S skip · ←/→ previous/next' + (S.suggest ? ' · Enter accept the model' : '');
  pv.state = S;
  await show(S.order.indexOf(S.start));
  pv.ready = true;
}
// whether the image after the current one is decoded (tests wait for it, as a person's look gives it time)
pv.aheadReady = () => pos + 1 >= S.order.length || decoded.has(S.order[pos + 1]);
pv.current = () => cur && { image: cur.name, points: cur.points, asked: cur.asked, needed: needed(), size: [cur.W, cur.H] };
main().catch((e) => { $('error').textContent = String(e); });
