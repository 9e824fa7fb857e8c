// Teaching the page new classes: the browser side of pocketvision.runtime.teach (same learner, same routing).
//
// A user names a class and gives a few photos; the model's embeddings of them (a teachable export's "embedding"
// output) fit a regularised softmax regression beside the shipped classes' anchors (model.json "teach"), one
// class-balanced fit. A photo whose fitted answer is a personal class is answered with it; otherwise the model's
// own answer stands. The examples live in IndexedDB at the model's input size with their embeddings, and never
// leave the page unless the user downloads them.
//
// The fit is Python's fit_head step for step (STEPS Nesterov steps at 1/L, l2 = 1/n) but in the dual: the weights
// stay a combination of the examples' rows (W = X^T A), so a step costs n*n*k multiplications instead of 2*n*d*k:
// an eighth of them for 300 examples of 1280 features.

export const STEPS = 200;  // as runtime/teach.py's STEPS (why: there)
export const MAX_EXAMPLES = 2000; // the dual's n*n Gram matrix: 32 MB of float64 at this count
const DB = 'pocketvision-teach';

export class TeachError extends Error {}

// IEEE half -> float (model.json stores anchors as float16, base64).
export function float16s(b64) {
  const bin = atob(b64);
  const u16 = new Uint16Array(bin.length / 2);
  for (let i = 0; i < u16.length; i++) u16[i] = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
  const out = new Float32Array(u16.length);
  for (let i = 0; i < u16.length; i++) {
    const h = u16[i], s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
    out[i] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
  }
  return out;
}

// Rows scaled to length 1 (float64), as runtime.teach.unit_rows.
export function unitRows(flat, d) {
  const n = flat.length / d, x = new Float64Array(flat.length);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += flat[i * d + j] ** 2;
    const r = 1 / Math.max(Math.sqrt(s), 1e-12);
    for (let j = 0; j < d; j++) x[i * d + j] = flat[i * d + j] * r;
  }
  return x;
}

// sum of a[i + t] * b[j + t] for t < len; four partial sums let the JIT overlap the multiplies (~2x here)
function dot(a, i, b, j, len) {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, t = 0;
  for (; t + 3 < len; t += 4) {
    s0 += a[i + t] * b[j + t]; s1 += a[i + t + 1] * b[j + t + 1];
    s2 += a[i + t + 2] * b[j + t + 2]; s3 += a[i + t + 3] * b[j + t + 3];
  }
  for (; t < len; t++) s0 += a[i + t] * b[j + t];
  return s0 + s1 + s2 + s3;
}

// Softmax regression on unit rows x (n x d, flat), classes y[i] in [0, k): mean cross-entropy + l2/2 |W|^2.
// Returns {weight: Float64Array d*k (row-major d x k, as PersonalHead.weight), bias: Float64Array k}.
export function fitHead(x, d, y, k, { l2 = null, steps = STEPS, balanced = false } = {}) {
  const n = y.length;
  const lam = l2 == null ? 1 / n : l2;
  const weight = new Float64Array(d * k), bias = new Float64Array(k);
  if (k === 1) return { weight, bias };
  const counts = new Float64Array(k);
  for (let i = 0; i < n; i++) counts[y[i]] += 1;
  const wt = new Float64Array(n);
  for (let i = 0; i < n; i++) wt[i] = balanced ? n / (k * counts[y[i]]) : 1;
  // Gram matrix K = X X^T
  const K = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) K[i * n + j] = K[j * n + i] = dot(x, i * d, x, j * d, d);
  }
  // |X|_2^2 = the largest eigenvalue of K (power iteration; K is positive semi-definite)
  let v = new Float64Array(n).fill(1 / Math.sqrt(n)), top = 0;
  for (let it = 0; it < 200; it++) {
    const u = new Float64Array(n);
    for (let i = 0; i < n; i++) { let s = 0; for (let j = 0; j < n; j++) s += K[i * n + j] * v[j]; u[i] = s; }
    let norm = 0;
    for (let i = 0; i < n; i++) norm += u[i] * u[i];
    norm = Math.sqrt(norm);
    if (norm === 0) break;
    for (let i = 0; i < n; i++) v[i] = u[i] / norm;
    if (Math.abs(norm - top) <= 1e-12 * norm) { top = norm; break; }
    top = norm;
  }
  let maxWt = 0;
  for (let i = 0; i < n; i++) maxWt = Math.max(maxWt, wt[i]);
  const step = 1 / (0.5 * maxWt * (top / n + 1) + lam);
  // Nesterov on (A, b), A stored class-major (k x n) so K @ A is k dot products of length n per row.
  let A = new Float64Array(k * n), Am = new Float64Array(k * n), b = new Float64Array(k), bm = new Float64Array(k);
  const z = new Float64Array(k), g = new Float64Array(k * n);
  let t = 1;
  for (let s = 0; s < steps; s++) {
    const gb = new Float64Array(k);
    for (let i = 0; i < n; i++) {
      const row = i * n;
      let mx = -Infinity;
      for (let c = 0; c < k; c++) {
        const acc = bm[c] + dot(K, row, Am, c * n, n);
        z[c] = acc;
        if (acc > mx) mx = acc;
      }
      let sum = 0;
      for (let c = 0; c < k; c++) { z[c] = Math.exp(z[c] - mx); sum += z[c]; }
      for (let c = 0; c < k; c++) {
        const gi = (wt[i] * (z[c] / sum - (y[i] === c ? 1 : 0))) / n;
        g[c * n + i] = gi;
        gb[c] += gi;
      }
    }
    const t1 = (1 + Math.sqrt(1 + 4 * t * t)) / 2, mom = (t - 1) / t1;
    const A1 = new Float64Array(k * n), b1 = new Float64Array(k);
    for (let q = 0; q < k * n; q++) A1[q] = Am[q] - step * (g[q] + lam * Am[q]);
    for (let c = 0; c < k; c++) b1[c] = bm[c] - step * gb[c];
    for (let q = 0; q < k * n; q++) Am[q] = A1[q] + mom * (A1[q] - A[q]);
    for (let c = 0; c < k; c++) bm[c] = b1[c] + mom * (b1[c] - b[c]);
    A = A1; b = b1; t = t1;
  }
  // W = X^T A
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < k; c++) {
      const a = A[c * n + i];
      if (a === 0) continue;
      for (let j = 0; j < d; j++) weight[j * k + c] += x[i * d + j] * a;
    }
  }
  bias.set(b);
  return { weight, bias };
}

// Probabilities of one embedding under a head {labels, weight (d*k), bias}.
export function headProbabilities(head, embedding) {
  const d = embedding.length, k = head.labels.length;
  const e = unitRows(embedding, d), z = new Float64Array(k);
  for (let c = 0; c < k; c++) {
    let s = head.bias[c];
    for (let j = 0; j < d; j++) s += e[j] * head.weight[j * k + c];
    z[c] = s;
  }
  const mx = Math.max(...z);
  let sum = 0;
  for (let c = 0; c < k; c++) { z[c] = Math.exp(z[c] - mx); sum += z[c]; }
  return Array.from(z, (v) => v / sum);
}

const idb = (req) => new Promise((res, rej) => { req.onsuccess = () => res(req.result); req.onerror = () => rej(req.error); });

function openDb() {
  const req = indexedDB.open(DB, 1);
  req.onupgradeneeded = () => {
    const db = req.result;
    db.createObjectStore('examples', { keyPath: 'id', autoIncrement: true }).createIndex('scope', 'scope');
    db.createObjectStore('heads', { keyPath: 'scope' });
  };
  return idb(req);
}

// One readwrite transaction: it all lands or none of it does (a full quota aborts it and keeps the old state).
function transact(db, fn) {
  return new Promise((res, rej) => {
    const tx = db.transaction(['examples', 'heads'], 'readwrite');
    let out;
    tx.oncomplete = () => res(out);
    tx.onabort = () => rej(tx.error || new Error('the write was aborted'));
    try { out = fn(tx.objectStore('examples'), tx.objectStore('heads')); } catch (e) { tx.abort(); rej(e); }
  });
}

function storageMessage(e) {
  const full = e && (e.name === 'QuotaExceededError' || /quota/i.test(String(e.message || e)));
  return full ? 'the browser\'s storage for this page is full: free some space (or remove a class) and add again; '
    + 'what was taught before is kept.' : `could not store the examples (${e && (e.message || e.name || e)}); `
    + 'what was taught before is kept.';
}

const modelId = (meta) => `${meta.model.sha256}`;

// Personal classes beside a teachable page's own. `embed(rgb, n, h, w)` -> Float32Array(n * features) with the
// model now running.
export class Teacher {
  static async open(meta, embed, scope = new URL('.', location.href).pathname) {
    const t = new Teacher();
    t.scope = scope;
    t.db = await openDb();
    t.examples = [];  // {id, name, h, w, pixels, embedding}
    t.head = null;
    t._use(meta, embed);
    const [rows, head] = await Promise.all([
      idb(t.db.transaction('examples').objectStore('examples').index('scope').getAll(scope)),
      idb(t.db.transaction('heads').objectStore('heads').get(scope))]);
    t.examples = rows;
    if (rows.length && head && head.model === t.model && rows.every((r) => r.model === t.model)) {
      t.head = { labels: head.labels, weight: head.weight, bias: head.bias };
    } else if (rows.length) {  // taught on another model (an update since): embed again with this one
      await t.commit(await t.prepare(meta, embed, { check: false }));
    }
    return t;
  }

  _use(meta, embed) {
    const teach = meta.teach;
    if (!teach || !teach.features) throw new TeachError('this model is not teachable: export it with `pocketvision export MODEL --to web --teachable`.');
    this.meta = meta;
    this.embed = embed;
    this.model = modelId(meta);
    this.features = teach.features;
    this.shipped = meta.labels || [];
    const a = teach.anchors;
    this.anchors = a && a.shape[0] ? float16s(a.float16_b64) : new Float32Array(0);
    this.anchorLabels = a ? a.labels : [];
  }

  classes() {
    const counts = new Map();
    for (const e of this.examples) counts.set(e.name, (counts.get(e.name) || 0) + 1);
    return [...counts].map(([name, count]) => ({ name, count })).sort((p, q) => (p.name < q.name ? -1 : 1));
  }

  // A new class's name: not empty, not a shipped class, not an existing one under another spelling.
  checkNewName(name) {
    const clean = String(name || '').trim();
    if (!clean) throw new TeachError('name the class first (an empty name is not a class).');
    if (clean.length > 60) throw new TeachError('a class name has at most 60 characters.');
    const same = (p) => p.trim().toLowerCase() === clean.toLowerCase();
    const shipped = this.shipped.find(same);
    if (shipped) throw new TeachError(`"${shipped}" is one of the model's own classes: choose another name.`);
    const mine = this.classes().find((c) => same(c.name));
    if (mine) throw new TeachError(`"${mine.name}" is already a class: add photos to it with its "+ photos" button.`);
    return clean;
  }

  // images: [{rgb, h, w}] at the model's input size. Refit and store in one transaction; the class count after.
  async add(name, images) {
    if (!this.classes().some((c) => c.name === name)) name = this.checkNewName(name);
    if (!images.length) throw new TeachError(`class "${name}" needs at least one example photo.`);
    if (this.examples.length + images.length > MAX_EXAMPLES) throw new TeachError(`at most ${MAX_EXAMPLES} examples: remove a class first.`);
    const [h, w] = this.meta.contract.size;
    const emb = await this._embedAll(images.map((im) => im.rgb), h, w);
    const added = images.map((im, i) => ({ scope: this.scope, name, h, w, pixels: im.rgb, model: this.model,
      embedding: emb.subarray(i * this.features, (i + 1) * this.features).slice() }));
    const all = [...this.examples, ...added];
    const head = this._fit(all);
    let ids;
    try {
      ids = await transact(this.db, (ex, heads) => {
        const reqs = added.map((r) => ex.add(r));
        heads.put({ scope: this.scope, model: this.model, ...head });
        return reqs;
      });
    } catch (e) {
      throw new TeachError(storageMessage(e));
    }
    added.forEach((r, i) => { r.id = ids[i].result; });
    this.examples = all;
    this.head = head;
    return all.filter((e) => e.name === name).length;
  }

  async remove(name) {
    const gone = this.examples.filter((e) => e.name === name);
    if (!gone.length) throw new TeachError(`there is no class "${name}" here.`);
    const keep = this.examples.filter((e) => e.name !== name);
    const head = keep.length ? this._fit(keep) : null;
    try {
      await transact(this.db, (ex, heads) => {
        for (const e of gone) ex.delete(e.id);
        if (head) heads.put({ scope: this.scope, model: this.model, ...head }); else heads.delete(this.scope);
      });
    } catch (e) {
      throw new TeachError(storageMessage(e));
    }
    this.examples = keep;
    this.head = head;
  }

  // {label, confidence} when a personal class wins for this embedding, else null (the model's answer stands).
  route(embedding) {
    if (!this.head || !embedding || embedding.length !== this.features) return null;
    const p = headProbabilities(this.head, Float64Array.from(embedding));
    let k = 0;
    for (let c = 1; c < p.length; c++) if (p[c] > p[k]) k = c;
    const label = this.head.labels[k];
    if (this.anchorLabels.includes(label)) return null;
    return { label, confidence: p[k], personal: true };
  }

  // For a new model (an update) before it answers: every kept example embedded by it, the head refitted, and the
  // smoke check of the personal side -- the refitted head must still tell the examples' classes apart (a release
  // whose embedding no longer does would silently lose them). Returns what commit() stores.
  async prepare(meta, embed, { check = true } = {}) {
    const old = { meta: this.meta, embed: this.embed };
    this._use(meta, embed);
    try {
      const [h, w] = meta.contract.size;
      const px = this.examples.map((e) => (e.h === h && e.w === w ? e.pixels : resized(e.pixels, e.h, e.w, h, w)));
      const emb = await this._embedAll(px, h, w);
      const rows = this.examples.map((e, i) => ({ ...e, h, w, pixels: px[i], model: this.model,
        embedding: emb.subarray(i * this.features, (i + 1) * this.features).slice() }));
      const head = rows.length ? this._fit(rows) : null;
      if (head && check) {
        const before = this.head ? this._recall(this.head, this.examples) : 1;
        const after = this._recall(head, rows);
        if (after < before - 0.1) {
          throw new TeachError(`the personal classes would lose their examples on this model (recall ${after.toFixed(2)}, was ${before.toFixed(2)})`);
        }
      }
      return { meta, embed, rows, head };
    } finally {
      this._use(old.meta, old.embed);
    }
  }

  // Store what prepare() computed and use it. A failed write keeps it in memory (the next visit embeds again).
  async commit({ meta, embed, rows, head }) {
    this._use(meta, embed);
    this.examples = rows;
    this.head = head;
    try {
      await transact(this.db, (ex, heads) => {
        for (const r of rows) ex.put(r);
        if (head) heads.put({ scope: this.scope, model: this.model, ...head });
      });
    } catch (e) {
      this.storeError = storageMessage(e);
    }
  }

  // What the page taught, for `pocketvision import`: the examples at the model's input size and the head.
  taught() {
    return { kind: 'pocketvision.taught', version: 1,
      model: { sha256: this.model, title: this.meta.title, labels: this.shipped, contract: this.meta.contract,
        teach: { output: this.meta.teach.output, features: this.features } },
      head: this.head && { labels: this.head.labels, weight: Array.from(this.head.weight), bias: Array.from(this.head.bias) },
      examples: this.examples.map((e) => ({ name: e.name, h: e.h, w: e.w, rgb_b64: toB64(e.pixels) })) };
  }

  _fit(rows) {
    const d = this.features, na = this.anchorLabels.length;
    const names = [...this.anchorLabels, ...rows.map((r) => r.name)];
    const labels = [...new Set(names)].sort();
    const index = new Map(labels.map((l, i) => [l, i]));
    const flat = new Float32Array(names.length * d);
    flat.set(this.anchors.subarray(0, na * d));
    rows.forEach((r, i) => flat.set(r.embedding, (na + i) * d));
    const y = Int32Array.from(names, (l) => index.get(l));
    const { weight, bias } = fitHead(unitRows(flat, d), d, y, labels.length, { balanced: true });
    return { labels, weight: Float32Array.from(weight), bias: Float32Array.from(bias) };
  }

  _recall(head, rows) {
    if (!rows.length) return 1;
    let ok = 0;
    for (const r of rows) {
      const p = headProbabilities(head, Float64Array.from(r.embedding));
      ok += head.labels[p.indexOf(Math.max(...p))] === r.name ? 1 : 0;
    }
    return ok / rows.length;
  }

  async _embedAll(pixels, h, w, batch = 8) {
    const d = this.features, out = new Float32Array(pixels.length * d), px = h * w * 3;
    for (let i = 0; i < pixels.length; i += batch) {
      const part = pixels.slice(i, i + batch), buf = new Uint8Array(part.length * px);
      part.forEach((p, j) => buf.set(p, j * px));
      const e = await this.embed(buf, part.length, h, w);
      if (e.length !== part.length * d) throw new TeachError(`the model gave ${e.length / part.length} features, not ${d}`);
      out.set(e, i * d);
    }
    return out;
  }
}

function toB64(u8) {
  let s = '';
  for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode(...u8.subarray(i, i + 0x8000));
  return btoa(s);
}

// A kept example at another model's input size (an update changed it): a plain bilinear resize of the pixels.
function resized(rgb, h, w, H, W) {
  const src = new OffscreenCanvas(w, h), rgba = new Uint8ClampedArray(w * h * 4);
  for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) { rgba[i] = rgb[j]; rgba[i + 1] = rgb[j + 1]; rgba[i + 2] = rgb[j + 2]; rgba[i + 3] = 255; }
  src.getContext('2d').putImageData(new ImageData(rgba, w, h), 0, 0);
  const dst = new OffscreenCanvas(W, H), ctx = dst.getContext('2d');
  ctx.drawImage(src, 0, 0, W, H);
  const out = ctx.getImageData(0, 0, W, H).data, o = new Uint8Array(W * H * 3);
  for (let i = 0, j = 0; i < out.length; i += 4, j += 3) { o[j] = out[i]; o[j + 1] = out[i + 1]; o[j + 2] = out[i + 2]; }
  return o;
}
