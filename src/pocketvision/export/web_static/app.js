// pocketvision web runtime: the exported model runs entirely in this page with onnxruntime-web
// (files in ./ort/, no CDN). model.json carries labels, the preprocessing contract, the decision
// threshold and the task's renderer module (render/<task>.js: bars, points on the frame, a stylised
// picture...), so this file never changes between models or tasks.
//
// Loading: model bytes (and the ~14 MB runtime .wasm) are fetched once with progress, kept in the
// Cache API under their SHA-256, and read from there on the next visit: no bytes cross the network.
// Backends: WebGPU when the browser has an adapter, else WASM (SIMD; threads when the page is
// cross-origin isolated, i.e. served with COOP/COEP headers).
//
// Over-the-air updates (update.js) when update.json and root.json sit next to the page: see update.js.
//
// Teaching (teach.js), when model.json has "teach" (`export --teachable`): personal classes named in the page,
// fitted beside the shipped ones in about a second, kept in IndexedDB; an update embeds them again before it swaps.
//
// Tests and apps use window.pv: await pv.ready; pv.runPixels(uint8 NHWC, n[, h, w]); pv.runSource(img|video|canvas).
// (pv.classifyPixels / pv.classifySource are the same functions under their first names.)

import { readBody, Updater } from './update.js';

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
  const bytes = await readBody(resp, { onBytes });
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
  // Over-the-air updates (update.json + root.json next to the page): a model installed by an earlier visit
  // comes from the Cache API instead of the page's own, so only the runtime binary is read here.
  const updates = await startUpdates();
  const installed = updates && (await updates.installed());
  const wanted = installed ? files.slice(0, 1) : files;
  const total = wanted.reduce((s, f) => s + f.size, 0);
  let done = 0;
  const bytes = await Promise.all(wanted.map((f) => cachedBytes(f.path, f.sha, (n) => { done += n; setProgress(done, total, 'model'); })));
  ort.env.wasm.wasmBinary = bytes[0].buffer;
  pv.timings.downloaded = performance.now();

  const options = { executionProviders: backend === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm'], graphOptimizationLevel: 'all' };
  // One open model: its session, its model.json, and the calls running on it. An update opens a second one
  // and swaps it in; the old session is released once its last call has returned.
  async function openModel(m, fileBytes) {
    const opts = { ...options };
    if (m.model.external_data.length) opts.externalData = m.model.external_data.map((c) => ({ path: c.path, data: fileBytes[c.path] }));
    const session = await ort.InferenceSession.create(fileBytes[m.model.path], opts);
    const om = { session, meta: m, input: session.inputNames[0], output: session.outputNames[0], inflight: 0, retired: false };
    om.run = async (rgb, n, h, w) => {
      om.inflight += 1;
      try {
        const out = await session.run({ [om.input]: new ort.Tensor('uint8', rgb, [n, h, w, 3]) });
        const t = out[om.output];  // the task's primary output (OutputSpec.names[0])
        // the others by name (a classifier's "unfamiliar" score), for the renderer
        const extra = Object.fromEntries(Object.entries(out).filter(([k]) => k !== om.output)
          .map(([k, v]) => [k, Array.from(v.data)]));
        return { data: t.data, dims: t.dims, type: t.type, extra, outputs: out };
      } finally {
        om.inflight -= 1;
        if (om.retired && !om.inflight) session.release();
      }
    };
    om.release = () => { om.retired = true; if (!om.inflight) session.release(); };
    return om;
  }
  let current = installed ? await openModel(installed.meta, installed.files)
    : await openModel(meta, Object.fromEntries(files.slice(1).map((f, i) => [f.path, bytes[i + 1]])));
  pv.meta = current.meta;
  pv.version = installed ? installed.version : null;
  const size = () => current.meta.contract.size;
  // uint8 NHWC in (any h, w when the model is fully convolutional) -> {data, dims, type}, on the model current
  // when the call starts.
  const run = (rgb, n, h = size()[0], w = size()[1]) => current.run(rgb, n, h, w);
  pv.backend = backend;
  pv.threads = threads;
  // Warm-up: the first run allocates and JIT-compiles kernels; users should not wait for that.
  await run(new Uint8Array(size()[0] * size()[1] * 3), 1);
  pv.timings.ready = performance.now();
  if (updates) {
    updates.page.open = async (m, fileBytes) => {
      const om = await openModel(m, fileBytes);
      await om.run(new Uint8Array(m.contract.size[0] * m.contract.size[1] * 3), 1, ...m.contract.size);
      // the personal classes move to the new model before it answers: embedded again, refitted, checked
      if (pv.teacher && m.teach) om.teach = await pv.teacher.prepare(m, embedWith(om));
      else if (pv.teacher && pv.teacher.examples.length) {
        throw new Error(`this release is not teachable: the ${pv.teacher.classes().length} classes taught here would be lost`);
      }
      return om;
    };
    updates.page.swap = (om, m, version) => {
      const old = current;
      if (om.teach) pv.teacher.commit(om.teach);
      else if (pv.teacher) { pv.teacher = null; $('teach').hidden = true; }  // a release that cannot be taught
      current = om;
      pv.meta = m;
      pv.version = version;
      old.release();
    };
    pv.updates = updates;
    if (updates.cfg.interval_s > 0) updates.start();
  }

  const renderer = await import(`./${meta.renderer}`);
  const ctx = $('canvas').getContext('2d', { willReadFrequently: true });
  pv.renderer = meta.renderer;
  // The raw output of n images: numbers as a flat array; uint8 images as base64 (compact for Playwright).
  pv.runPixels = async (rgb, n = 1, h = size()[0], w = size()[1]) => {
    const t0 = performance.now();
    const r = await run(rgb instanceof Uint8Array ? rgb : new Uint8Array(rgb), n, h, w);
    const ms = performance.now() - t0;
    if (r.type === 'uint8') {
      let s = '';
      for (let i = 0; i < r.data.length; i += 0x8000) s += String.fromCharCode(...r.data.subarray(i, i + 0x8000));
      return { b64: btoa(s), dims: r.dims, type: r.type, ms };
    }
    return { data: Array.from(r.data), dims: r.dims, type: r.type, extra: r.extra, ms };
  };
  // A picture, video frame or canvas -> the renderer's input (the contract's resize by default) -> the model
  // -> the renderer draws the answer on the page and returns it (kept in pv.last).
  pv.runSource = async (src) => {
    const m = current.meta;
    const x = renderer.prepare ? renderer.prepare(src, m, ctx, { drawToCanvas }) : { rgb: drawToCanvas(src, m.contract, ctx), h: size()[0], w: size()[1] };
    const t0 = performance.now();
    const r = await run(x.rgb, 1, x.h, x.w);
    const ms = performance.now() - t0;
    const result = { ...renderer.render({ output: r, src, meta: m, input: x, page: $ }), ms };
    const mine = pv.teacher && m.teach && pv.teacher.route(r.outputs[m.teach.output].data);
    if (mine) {  // a class taught in this page wins: its answer replaces the model's
      Object.assign(result, mine);
      $('result').textContent = `${mine.label} (${(100 * mine.confidence).toFixed(1)}%) · taught here`;
    }
    pv.lastInput = x;
    $('timing').textContent = `model ${ms.toFixed(1)} ms on ${pv.backend}` + (pv.version != null ? ` · version ${pv.version}` : '');
    pv.last = result;
    pv.lastSource = src;
    offerCorrection(result, m);
    return result;
  };
  pv.classifyPixels = async (rgb, n = 1) => {
    const r = await pv.runPixels(rgb, n);
    const per = r.data.length / n;
    return { probabilities: Array.from({ length: n }, (_, i) => r.data.slice(i * per, (i + 1) * per)), ms: r.ms };
  };
  pv.classifySource = pv.runSource;
  pv.runUrl = async (url) => {
    const img = new Image();
    img.src = url;
    await img.decode();
    $('view').src = url;
    const result = await pv.runSource(img);
    pv.lastPhoto = url;
    return result;
  };
  pv.classifyUrl = pv.runUrl;
  // teaching needs IndexedDB (not in every private window): without it the page still answers, and says why
  if (current.meta.teach) {
    await startTeaching(() => current, ctx).catch((e) => {
      pv.teachError = String((e && e.message) || e);
      $('teach').hidden = false;
      $('teach-new').hidden = true;
      $('teach-status').textContent = `Teaching is off in this browser: ${pv.teachError}`;
      $('teach-status').className = 'bad';
    });
  }
  pv.status = 'ready';
  $('loading').hidden = true;
  $('runtime').textContent = `onnxruntime-web ${ort.env.versions.web || ''} · ${backend}` +
    (backend === 'wasm' ? ` · ${threads} thread${threads > 1 ? 's' : ''}` : '') +
    ` · ready in ${((pv.timings.ready - pv.timings.start) / 1000).toFixed(2)} s`;
  readyResolve(pv);
}

// The embedding output of one open model, for the teacher.
const embedWith = (om) => async (rgb, n, h, w) => Float32Array.from((await om.run(rgb, n, h, w)).outputs[om.meta.teach.output].data);

// The teach panel: name a class and give photos, add the photo on screen to a class (a one-tap correction),
// remove a class, download what was taught. Every failure is one message under the panel; nothing taught is lost.
async function startTeaching(currentModel, ctx) {
  const { Teacher, TeachError } = await import('./teach.js');
  const status = $('teach-status');
  const say = (text, bad = false) => { status.textContent = text; status.className = bad ? 'bad' : 'muted'; };
  const teacher = (pv.teacher = await Teacher.open(currentModel().meta, (...a) => embedWith(currentModel())(...a)));
  const MAX_FILE = 50e6;  // a photo larger than this is not a phone photo: refuse it before decoding
  const readImages = async (files) => {
    const out = [];
    for (const f of files) {
      if (f.size > MAX_FILE) throw new TeachError(`${f.name} is ${(f.size / 1e6).toFixed(0)} MB: use photos under 50 MB; nothing was added.`);
      let bmp;
      try { bmp = await createImageBitmap(f); } catch (e) {
        throw new TeachError(`${f.name} is not an image this browser can read; nothing was added.`);
      }
      const [h, w] = currentModel().meta.contract.size;
      out.push({ rgb: drawToCanvas(bmp, currentModel().meta.contract, ctx), h, w });
      bmp.close();
    }
    return out;
  };
  const guard = (fn) => async (...a) => {
    try { return await fn(...a); } catch (e) {
      const msg = e instanceof TeachError ? e.message : `could not teach: ${e.message || e}; what was taught before is kept.`;
      say(msg, true);
      throw new TeachError(msg);
    } finally { draw(); }
  };
  function draw() {
    const rows = teacher.classes().map(({ name, count }) => {
      const row = document.createElement('div');
      const label = document.createElement('span');
      label.textContent = `${name} · ${count} photo${count > 1 ? 's' : ''}`;  // a name is data, never markup
      const btn = (text, fn) => { const b = document.createElement('button'); b.type = 'button'; b.textContent = text; b.onclick = () => fn().catch(() => {}); return b; };
      row.append(label, btn('+ photos', async () => { $('teach-more').dataset.name = name; $('teach-more').value = ''; $('teach-more').click(); }),
        btn('this photo is it', () => pv.teach.addShown(name)), btn('remove', () => pv.teach.remove(name)));
      row.dataset.name = name;
      return row;
    });
    $('teach-classes').replaceChildren(...rows);
    $('teach-download').hidden = !rows.length;
  }
  const learn = async (name, files) => {
    say(`learning "${name}"…`);
    const t0 = performance.now();
    const n = await teacher.add(name, await readImages(files));
    say(`"${name}" learned from ${n} photo${n > 1 ? 's' : ''} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return n;
  };
  pv.teach = {
    classes: () => teacher.classes(),
    // a new class: a free name + image files (File/Blob) -> its count
    create: guard(async (name, files) => {
      name = teacher.checkNewName(name);
      if (!files.length) throw new TeachError(`class "${name}" needs at least one example photo: choose some.`);
      return learn(name, files);
    }),
    // more photos of a class taught before
    add: guard(async (name, files) => {
      if (!teacher.classes().some((c) => c.name === name)) throw new TeachError(`there is no class "${name}" here: add it as a new class.`);
      if (!files.length) throw new TeachError(`choose at least one photo of "${name}".`);
      return learn(name, files);
    }),
    // the photo or frame on screen (as the model saw it) is an example of `name`: one tap to correct an answer
    addShown: guard(async (name) => {
      if (!pv.lastInput) throw new TeachError('show the model a photo first, then say which class it is.');
      const [h, w] = currentModel().meta.contract.size;
      if (pv.lastInput.h !== h || pv.lastInput.w !== w) throw new TeachError('this photo was read at another size; choose it again.');
      const n = await teacher.add(name, [{ rgb: pv.lastInput.rgb.slice(), h, w }]);
      say(`"${name}" now has ${n} photos`);
      if (pv.lastSource) await pv.runSource(pv.lastSource);
      return n;
    }),
    remove: guard(async (name) => { await teacher.remove(name); say(`"${name}" removed`); }),
    taught: () => teacher.taught(),
    download: guard(async () => {
      const blob = new Blob([JSON.stringify(teacher.taught())], { type: 'application/json' });
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = 'taught.json';
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    }),
  };
  $('teach-new').addEventListener('submit', (e) => {
    e.preventDefault();
    pv.teach.create($('teach-name').value, [...$('teach-files').files]).then(() => { $('teach-name').value = ''; $('teach-files').value = ''; }, () => {});
  });
  $('teach-more').addEventListener('change', (e) => pv.teach.add(e.target.dataset.name, [...e.target.files]).catch(() => {}));
  $('teach-download').addEventListener('click', () => pv.teach.download().catch(() => {}));
  $('teach').hidden = false;
  if (teacher.storeError) say(teacher.storeError, true);
  draw();
}

async function startUpdates() {
  const cfgResp = await fetch('update.json', { cache: 'no-cache' }).catch(() => null);
  if (!cfgResp || !cfgResp.ok) return null;
  const root = await (await fetch('root.json', { cache: 'no-cache' })).json();
  return new Updater(await cfgResp.json(), root, { runtimeVersion: pv.meta.onnxruntime_web, renderer: pv.meta.renderer });
}

// "wrong?": shown when updates are on and the answer is a label; sends the user's correction to the registry.
// "is this right?" too when the model was unsure or the photo looked unlike its training photos: a "yes" there
// teaches as much as a correction (the same rule as pocketvision.client.worth_asking).
const ASK_BELOW = 0.7;
function offerCorrection(result, m) {
  const box = $('wrong');
  // a class taught here never reaches the registry: its name and photos stay in this browser
  if (!pv.updates || result.label === undefined || !m.labels || result.personal) { box.hidden = true; return; }
  const select = $('wrong-label');
  select.replaceChildren(...m.labels.filter((l) => l !== result.label).map((l) => new Option(l, l)));
  $('wrong-status').textContent = '';
  box.hidden = false;
  box.dataset.predicted = result.label;
  box.dataset.confidence = result.confidence ?? '';
  box.dataset.unfamiliar = result.unfamiliar ?? '';
  $('ask').hidden = !(result.unfamiliar_flag || result.confidence < ASK_BELOW);
}

// The photo as the user gave it (a file or URL), or the current video frame as a JPEG.
async function photoBlob() {
  if (pv.lastPhoto) return (await fetch(pv.lastPhoto)).blob();
  const src = pv.lastSource, c = document.createElement('canvas');
  c.width = src.videoWidth || src.naturalWidth || src.width;
  c.height = src.videoHeight || src.naturalHeight || src.height;
  c.getContext('2d').drawImage(src, 0, 0);
  return new Promise((res) => c.toBlob(res, 'image/jpeg', 0.92));
}

pv.sendCorrection = async (corrected = $('wrong-label').value, sharePixels = $('wrong-share').checked) => {
  const status = $('wrong-status');
  try {
    const box = $('wrong');
    const r = await pv.updates.feedback({ image: sharePixels ? await photoBlob() : null, predicted: box.dataset.predicted,
      corrected, sharePixels, confidence: box.dataset.confidence, unfamiliar: box.dataset.unfamiliar });
    status.textContent = 'Thanks: sent.';
    return r;
  } catch (e) {
    status.textContent = String(e.message || e);
    throw e;
  }
};
$('wrong-send').addEventListener('click', () => pv.sendCorrection().catch(() => {}));
$('right-send').addEventListener('click', () => pv.sendCorrection($('wrong').dataset.predicted).catch(() => {}));

// Photos: drop or choose; camera: run the model on frames as fast as it allows.
async function runFile(file) {
  await pv.ready;
  const url = URL.createObjectURL(file);
  await pv.runUrl(url);
}
$('file').addEventListener('change', (e) => e.target.files[0] && runFile(e.target.files[0]));
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  if (e.dataTransfer.files[0]) runFile(e.dataTransfer.files[0]);
});
$('camera').addEventListener('click', async () => {
  pv.lastPhoto = null;
  await pv.ready;
  const video = $('video');
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' }, audio: false });
  video.style.display = 'block';
  $('view').style.display = 'none';
  await video.play();
  pv.frames = 0;
  const loop = async () => {
    if (video.readyState >= 2) {
      await pv.runSource(video);
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
