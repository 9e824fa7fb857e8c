// pocketvision web runtime: the exported model runs entirely in this page with onnxruntime-web
// (files in ./ort/, no CDN). model.json carries labels, the preprocessing contract and the decision
// threshold, so this file never changes between models.
//
// Loading: model bytes (and the ~14 MB runtime .wasm) are fetched once with progress, kept in the
// Cache API under their SHA-256, and read from there on the next visit: no bytes cross the network.
// Backends: WebGPU when the browser has an adapter, else WASM (SIMD; threads when the page is
// cross-origin isolated, i.e. served with COOP/COEP headers).
//
// Tests and apps use window.pv: await pv.ready; pv.classifyPixels(uint8 NHWC, n); pv.classifySource(el).

const params = new URLSearchParams(location.search);
const CACHE_NAME = 'pocketvision-model-cache';
const $ = (id) => document.getElementById(id);
const pv = (window.pv = { timings: { start: performance.now() }, status: 'loading', backend: null });
let readyResolve, readyReject;
pv.ready = new Promise((res, rej) => { readyResolve = res; readyReject = rej; });

function setProgress(done, total, what) {
  $('progress').max = total || 1;
  $('progress').value = done;
  $('progress-text').textContent = `${what}: ${(done / 1e6).toFixed(2)} / ${(total / 1e6).toFixed(2)} MB`;
}

// Fetch with byte progress, served from the Cache API when this exact file (by hash) was seen before.
async function cachedBytes(url, sha, onBytes) {
  const key = new URL(`${url}?sha256=${sha || 'none'}`, location.href).href;
  const cache = 'caches' in self ? await caches.open(CACHE_NAME).catch(() => null) : null;
  const hit = cache && (await cache.match(key));
  if (hit) {
    const buf = new Uint8Array(await hit.arrayBuffer());
    onBytes(buf.length);
    pv.cacheHits = (pv.cacheHits || 0) + 1;
    return buf;
  }
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  const reader = resp.body.getReader();
  const parts = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    got += value.length;
    onBytes(value.length);
  }
  const bytes = new Uint8Array(got);
  let off = 0;
  for (const p of parts) { bytes.set(p, off); off += p.length; }
  if (cache) await cache.put(key, new Response(bytes)).catch(() => {});
  return bytes;
}

async function pickBackend() {
  const want = params.get('backend');  // 'wasm' | 'webgpu' forces one
  if (want !== 'wasm' && navigator.gpu) {
    try {
      if (await navigator.gpu.requestAdapter()) return 'webgpu';
    } catch (e) { /* no adapter: WASM */ }
  }
  return 'wasm';
}

// The contract's resize, drawn on a canvas. Exact when the source already has the model's size.
function drawToCanvas(src, contract, ctx) {
  const [H, W] = contract.size;
  const sw = src.videoWidth || src.naturalWidth || src.width, sh = src.videoHeight || src.naturalHeight || src.height;
  ctx.canvas.width = W; ctx.canvas.height = H;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  if (contract.resize === 'center_crop') {
    const scale = Math.max(H, W) / contract.crop_pct / Math.min(sw, sh);
    const cw = W / scale, ch = H / scale;
    ctx.drawImage(src, (sw - cw) / 2, (sh - ch) / 2, cw, ch, 0, 0, W, H);
  } else if (contract.resize === 'letterbox') {
    const s = Math.min(W / sw, H / sh), dw = sw * s, dh = sh * s;
    ctx.fillStyle = 'rgb(114,114,114)';
    ctx.fillRect(0, 0, W, H);
    ctx.drawImage(src, 0, 0, sw, sh, (W - dw) / 2, (H - dh) / 2, dw, dh);
  } else {
    ctx.drawImage(src, 0, 0, W, H);
  }
  const rgba = ctx.getImageData(0, 0, W, H).data;
  const rgb = new Uint8Array(W * H * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

// Same rule as pocketvision.runtime.decision.decide.
function decide(probs, labels, threshold) {
  let k = probs.indexOf(Math.max(...probs));
  if (threshold && threshold.value != null && labels.length === 2) {
    const pos = threshold.positive;
    k = probs[pos] >= threshold.value ? pos : 1 - pos;
  }
  return { label: labels[k], index: k, confidence: probs[k], probabilities: Object.fromEntries(labels.map((l, i) => [l, probs[i]])) };
}

function show(result, ms) {
  $('result').textContent = `${result.label} (${(100 * result.confidence).toFixed(1)}%)`;
  $('probs').innerHTML = '';
  for (const [label, p] of Object.entries(result.probabilities)) {
    const row = document.createElement('div');
    row.innerHTML = `<span style="width:8em">${label}</span><span class="bar" style="width:${(p * 12).toFixed(2)}em"></span>
      <span>${(100 * p).toFixed(1)}%</span>`;
    $('probs').appendChild(row);
  }
  $('timing').textContent = `model ${ms.toFixed(1)} ms on ${pv.backend}`;
}

// Keypoints: model-input pixels -> source pixels (the inverse of drawToCanvas), as {name: {x, y, score}}.
function toSource(row, src, meta) {
  const [H, W] = meta.contract.size;
  const sw = src.videoWidth || src.naturalWidth || src.width, sh = src.videoHeight || src.naturalHeight || src.height;
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

// The live view for keypoint models: the frame, every point, and a pair of glasses on the eyes
// (or on the first flip pair), scaled and rotated with them: the dog-face filter, in the browser.
const smooth = {};
function drawKeypoints(src, pts, meta) {
  const view = $('overlay');
  const sw = src.videoWidth || src.naturalWidth || src.width, sh = src.videoHeight || src.naturalHeight || src.height;
  view.width = sw; view.height = sh; view.hidden = false;
  $('view').style.display = 'none';
  $('video').style.display = 'none';
  const g = view.getContext('2d');
  g.drawImage(src, 0, 0, sw, sh);
  // Exponential smoothing across frames, so the sprite does not jitter on a live camera.
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

async function main() {
  const meta = await (await fetch('model.json')).json();
  pv.meta = meta;
  document.title = $('title').textContent = meta.title || 'pocketvision';
  const backend = await pickBackend();
  const runtime = meta.runtime[backend];
  const ort = await import(`./ort/${runtime.module}`);
  ort.env.wasm.wasmPaths = new URL('./ort/', location.href).href;
  // Half the cores, at most 4: on a 2-core machine a second WASM thread costs more than it gains.
  const threads = params.has('threads') ? +params.get('threads')
    : (self.crossOriginIsolated ? Math.max(1, Math.min(4, Math.floor((navigator.hardwareConcurrency || 1) / 2))) : 1);
  ort.env.wasm.numThreads = threads;

  // Everything to download, with one progress bar: runtime binary, graph, weight chunks (in parallel).
  const files = [{ path: `ort/${runtime.wasm}`, sha: runtime.wasm_sha256, size: runtime.wasm_size },
    { path: meta.model.path, sha: meta.model.sha256, size: meta.model.size },
    ...meta.model.external_data.map((c) => ({ path: c.path, sha: c.sha256, size: c.size }))];
  const total = files.reduce((s, f) => s + f.size, 0);
  let done = 0;
  const bytes = await Promise.all(files.map((f) => cachedBytes(f.path, f.sha, (n) => { done += n; setProgress(done, total, 'model'); })));
  ort.env.wasm.wasmBinary = bytes[0].buffer;
  pv.timings.downloaded = performance.now();

  const options = { executionProviders: backend === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm'], graphOptimizationLevel: 'all' };
  if (meta.model.external_data.length) {
    options.externalData = meta.model.external_data.map((c, i) => ({ path: c.path, data: bytes[i + 2] }));
  }
  const session = await ort.InferenceSession.create(bytes[1], options);
  pv.backend = backend;
  pv.threads = threads;
  const [H, W] = meta.contract.size;
  const input = session.inputNames[0];

  const output = session.outputNames[0];  // probabilities (classify) or keypoints (N, K, 3)
  async function runPixels(rgb, n) {
    const out = await session.run({ [input]: new ort.Tensor('uint8', rgb, [n, H, W, 3]) });
    return out[output].data;
  }
  // Warm-up: the first run allocates and JIT-compiles kernels; users should not wait for that.
  await runPixels(new Uint8Array(H * W * 3), 1);
  pv.timings.ready = performance.now();

  const ctx = $('canvas').getContext('2d', { willReadFrequently: true });
  // One row per image: probabilities (C) or keypoints flattened (K * 3: x, y, score in model pixels).
  pv.runPixels = async (rgb, n = 1) => {
    const t0 = performance.now();
    const p = Array.from(await runPixels(rgb instanceof Uint8Array ? rgb : new Uint8Array(rgb), n));
    const ms = performance.now() - t0;
    const per = p.length / n;
    return { rows: Array.from({ length: n }, (_, i) => p.slice(i * per, (i + 1) * per)), ms };
  };
  pv.classifyPixels = async (rgb, n = 1) => {
    const r = await pv.runPixels(rgb, n);
    return { probabilities: r.rows, ms: r.ms };
  };
  pv.classifySource = async (src) => {
    const rgb = drawToCanvas(src, meta.contract, ctx);
    const t0 = performance.now();
    const row = Array.from(await runPixels(rgb, 1));
    const ms = performance.now() - t0;
    let result;
    if (meta.task === 'keypoints') {
      result = { keypoints: toSource(row, src, meta), ms };
      drawKeypoints(src, result.keypoints, meta);
      $('timing').textContent = `model ${ms.toFixed(1)} ms on ${pv.backend}`;
    } else {
      result = { ...decide(row, meta.labels, meta.threshold), ms };
      show(result, ms);
    }
    pv.last = result;
    return result;
  };
  pv.classifyUrl = async (url) => {
    const img = new Image();
    img.src = url;
    await img.decode();
    $('view').src = url;
    return pv.classifySource(img);
  };
  pv.status = 'ready';
  $('loading').hidden = true;
  $('runtime').textContent = `onnxruntime-web ${ort.env.versions.web || ''} · ${backend}` +
    (backend === 'wasm' ? ` · ${threads} thread${threads > 1 ? 's' : ''}` : '') +
    ` · ready in ${((pv.timings.ready - pv.timings.start) / 1000).toFixed(2)} s`;
  readyResolve(pv);
}

// Photos: drop or choose; camera: classify frames as fast as the model allows.
async function classifyFile(file) {
  await pv.ready;
  const url = URL.createObjectURL(file);
  await pv.classifyUrl(url);
}
$('file').addEventListener('change', (e) => e.target.files[0] && classifyFile(e.target.files[0]));
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  if (e.dataTransfer.files[0]) classifyFile(e.dataTransfer.files[0]);
});
$('camera').addEventListener('click', async () => {
  await pv.ready;
  const video = $('video');
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' }, audio: false });
  video.style.display = 'block';
  $('view').style.display = 'none';
  await video.play();
  pv.frames = 0;
  const loop = async () => {
    if (video.readyState >= 2) {
      await pv.classifySource(video);
      pv.frames += 1;
    }
    requestAnimationFrame(loop);
  };
  loop();
});

main().catch((e) => {
  pv.status = 'error';
  pv.error = String((e && e.message) || e);
  $('error').textContent = `Could not start: ${pv.error}`;
  readyReject(e);
});
