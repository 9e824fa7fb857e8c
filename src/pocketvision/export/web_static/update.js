// pocketvision over-the-air updates for the web page: the browser side of `pocketvision.client.ModelUpdater`.
//
// The page finds update.json next to it ({server, model, channel, token, app_version, interval_s}) and root.json
// (the registry's trusted root, the one trust anchor; `pocketvision web-updates FOLDER ...` writes both).
// One check():
//   1. The Update Framework's client workflow, in the browser: newer root versions (each signed by the old and
//      the new root keys), timestamp (a conditional GET: the HTTP cache revalidates it with If-None-Match),
//      snapshot and targets by version (consistent snapshots). Every file's Ed25519 signatures are checked with
//      WebCrypto against the threshold its role has in root; expired metadata (freeze), a version lower than
//      one seen before (rollback), and snapshot/targets versions other than the ones signed (mix-and-match)
//      are refused. What was trusted is kept in localStorage, so a replay is refused after a reload too.
//   2. The channel's plan (a signed target) and the device's own decision (the same stable hash of its id).
//   3. The release's web files: each is a signed target; its bytes are read with a cap of the signed length
//      (an endless download is cut) and their SHA-256 must equal the signed hash (the integrity check). They
//      go into the Cache API under that hash, so a reload installs from there without the network.
//   4. The new model is opened in its own session and run on the publisher's smoke inputs; its outputs must
//      equal what the same file gave in Chromium at publish time. Only then is it swapped in, on the next idle
//      frame: a call in flight finishes on the model it started with.
//   5. A failure leaves the running model in place, marks the version bad on this device and is reported.

const enc = new TextEncoder();

export class UpdateError extends Error {}

// securesystemslib's canonical JSON (what python-tuf signs): sorted keys, no spaces, only \ and " escaped.
export function canonical(v) {
  if (v === null) return 'null';
  if (v === true) return 'true';
  if (v === false) return 'false';
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw new UpdateError('canonical JSON has no floats');
    return String(v);
  }
  if (typeof v === 'string') return `"${v.replace(/(["\\])/g, '\\$1')}"`;
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  return `{${Object.keys(v).sort().map((k) => `${canonical(k)}:${canonical(v[k])}`).join(',')}}`;
}

const hexBytes = (h) => {
  if (typeof h !== 'string' || !/^([0-9a-f]{2})*$/.test(h)) throw new UpdateError('not hex');
  return Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
};
const toHex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
export const sha256Hex = async (bytes) => toHex(await crypto.subtle.digest('SHA-256', bytes));

// The signatures of `md` that verify with `role`'s keys in `root` (a signed root body) must reach its threshold.
async function verifyRole(md, role, root) {
  const r = root.roles && root.roles[role];
  if (!r) throw new UpdateError(`root has no ${role} role`);
  if (!md || !md.signed || md.signed._type !== role) throw new UpdateError(`${role}: wrong metadata type`);
  const msg = enc.encode(canonical(md.signed));
  const good = new Set();
  for (const s of md.signatures || []) {
    if (!r.keyids.includes(s.keyid) || good.has(s.keyid)) continue;
    const k = root.keys[s.keyid];
    if (!k || k.keytype !== 'ed25519' || k.scheme !== 'ed25519') continue;
    try {
      const key = await crypto.subtle.importKey('raw', hexBytes(k.keyval.public), { name: 'Ed25519' }, false, ['verify']);
      if (await crypto.subtle.verify({ name: 'Ed25519' }, key, hexBytes(s.sig), msg)) good.add(s.keyid);
    } catch (e) { /* a malformed key or signature counts as no signature */ }
  }
  if (good.size < r.threshold) {
    throw new UpdateError(`${role}: ${good.size} valid signature(s), threshold ${r.threshold}`);
  }
}

function notExpired(md, role, now) {
  if (!(new Date(md.signed.expires).getTime() > now)) throw new UpdateError(`${role} metadata expired ${md.signed.expires}`);
}

// A response body as one Uint8Array, read in chunks: `onBytes` sees progress, and past `cap` bytes the read is
// cancelled (an endless response costs at most cap bytes).
export async function readBody(resp, { cap = Infinity, what = resp.url, onBytes = () => {} } = {}) {
  const reader = resp.body.getReader();
  const parts = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    got += value.length;
    if (got > cap) {
      reader.cancel().catch(() => {});
      throw new UpdateError(`${what}: longer than ${cap} bytes`);
    }
    parts.push(value);
    onBytes(value.length);
  }
  const out = new Uint8Array(got);
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

// ---- the device's decision: ota/plans.py decide(), the same numbers --------------------------------------
export async function bucket(model, deviceId) {
  const h = new Uint8Array(await crypto.subtle.digest('SHA-256', enc.encode(`${model}\u0000${deviceId}`)));
  let x = 0n;
  for (let i = 0; i < 8; i++) x = (x << 8n) | BigInt(h[i]);
  return Number(x) / 2 ** 64 * 100;
}
const vtuple = (v) => v.split('.').map(Number);
function versionAtLeast(a, b) {
  const x = vtuple(a), y = vtuple(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if ((x[i] ?? -1) !== (y[i] ?? -1)) return (x[i] ?? -1) > (y[i] ?? -1);
  }
  return true;
}
export async function decide(plan, deviceId, { appVersion, platform, metered, current }) {
  const c = plan.conditions || {};
  const eligible = (c.platforms == null || c.platforms.includes(platform)) &&
    (c.min_app_version == null || (appVersion != null && versionAtLeast(appVersion, c.min_app_version)));
  let want = eligible && (await bucket(plan.model, deviceId)) < plan.rollout ? plan.current : plan.previous;
  const leaving = current != null && current === plan.rolled_back_from;
  if (want == null && leaving) want = plan.current;
  if (want == null || want.version === current) return null;
  if (c.unmetered_only && metered && !leaving) return null;
  return want;
}

// ---- outputs: the smoke file's arrays --------------------------------------------------------------------
const TYPED = { uint8: Uint8Array, float32: Float32Array, int32: Int32Array, float64: Float64Array, int64: BigInt64Array };
function fromB64(d) {
  const T = TYPED[d.dtype];
  if (!T) throw new UpdateError(`smoke file: dtype ${d.dtype}`);
  const raw = Uint8Array.from(atob(d.data), (ch) => ch.charCodeAt(0));
  return { data: new T(raw.buffer, 0, raw.length / T.BYTES_PER_ELEMENT), shape: d.shape };
}
// The same file in the same runtime: equal up to float reassociation across thread counts.
function sameOutputs(got, want) {
  if (got.length !== want.length) return `output length ${got.length} != recorded ${want.length}`;
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(Number(got[i]) - Number(want[i])));
  const tol = want instanceof Uint8Array ? 1 : 1e-3;
  return worst <= tol ? null : `outputs differ from the recorded ones by ${worst.toPrecision(3)} (tolerance ${tol})`;
}

// ---- the updater ------------------------------------------------------------------------------------------
export class Updater {
  // config: update.json; trustedRoot: root.json (parsed); page: { runtimeVersion, renderer, open(meta, files)
  // -> candidate {run(rgb, n, h, w), release()}, swap(candidate, meta, version) }.
  constructor(config, trustedRoot, page) {
    this.cfg = { channel: 'stable', platform: 'web', interval_s: 3600, ...config };
    this.server = this.cfg.server.replace(/\/$/, '');
    this.page = page;
    this.key = `pv-ota:${this.server}:${this.cfg.model}:${this.cfg.channel}`;
    this.state = JSON.parse(localStorage.getItem(this.key) || 'null') || { bad: [], installed: null, tuf: {} };
    if (!this.state.tuf.root) this.state.tuf.root = trustedRoot;
    this.deviceId = localStorage.getItem('pv-device-id') || crypto.randomUUID().replace(/-/g, '');
    localStorage.setItem('pv-device-id', this.deviceId);
    this.headers = this.cfg.token ? { Authorization: `Bearer ${this.cfg.token}` } : {};
    this.version = null;
    this.log = [];
  }

  save() { localStorage.setItem(this.key, JSON.stringify(this.state)); }

  async get(path, init = {}) {
    const r = await fetch(`${this.server}${path}`, { ...init, headers: { ...this.headers, ...(init.headers || {}) } });
    return r;
  }

  // Read a body, never more than `cap` bytes (TUF's length limits: an endless response is cut).
  async bytes(resp, cap, what) {
    if (!resp.ok) throw new UpdateError(`${what}: HTTP ${resp.status}`);
    return readBody(resp, { cap, what });
  }

  async metadata(name, cap, expect) {
    const resp = await this.get(`/tuf/metadata/${name}`, { cache: 'no-cache' });
    const raw = await this.bytes(resp, cap, name);
    if (expect && expect.length != null && raw.length !== expect.length) throw new UpdateError(`${name}: length differs from the signed one`);
    if (expect && expect.hashes && expect.hashes.sha256 && (await sha256Hex(raw)) !== expect.hashes.sha256) {
      throw new UpdateError(`${name}: hash differs from the signed one`);
    }
    try { return JSON.parse(new TextDecoder().decode(raw)); } catch (e) { throw new UpdateError(`${name}: not JSON`); }
  }

  // TUF's client workflow (specification 5.3-5.6) over this.state.tuf.
  async refresh() {
    const t = this.state.tuf;
    const now = Date.now();
    for (let n = t.root.signed.version + 1; n < t.root.signed.version + 1 + 32; n++) {
      const resp = await this.get(`/tuf/metadata/${n}.root.json`, { cache: 'no-cache' });
      if (resp.status === 404) { resp.body && resp.body.cancel().catch(() => {}); break; }
      const raw = await this.bytes(resp, 512 * 1024, `${n}.root.json`);
      const next = JSON.parse(new TextDecoder().decode(raw));
      await verifyRole(next, 'root', t.root.signed);  // the old root vouches for it...
      await verifyRole(next, 'root', next.signed);    // ...and it vouches for itself
      if (next.signed.version !== n) throw new UpdateError(`root: version ${next.signed.version}, expected ${n}`);
      const rotated = (role) => canonical(t.root.signed.roles[role]) !== canonical(next.signed.roles[role]);
      if (rotated('timestamp')) { delete t.timestamp; delete t.snapshot; }
      else if (rotated('snapshot')) { delete t.snapshot; }
      t.root = next;
    }
    notExpired(t.root, 'root', now);
    const root = t.root.signed;

    const ts = await this.metadata('timestamp.json', 64 * 1024);
    await verifyRole(ts, 'timestamp', root);
    if (t.timestamp) {
      if (ts.signed.version < t.timestamp.signed.version) throw new UpdateError(`timestamp: version ${ts.signed.version} is older than ${t.timestamp.signed.version} (rollback)`);
      if (ts.signed.meta['snapshot.json'].version < t.timestamp.signed.meta['snapshot.json'].version) {
        throw new UpdateError('timestamp: names an older snapshot (rollback)');
      }
    }
    notExpired(ts, 'timestamp', now);
    t.timestamp = ts;

    const sm = ts.signed.meta['snapshot.json'];
    if (!t.snapshot || t.snapshot.signed.version !== sm.version) {
      const snap = await this.metadata(`${sm.version}.snapshot.json`, sm.length || 2 << 20, sm);
      await verifyRole(snap, 'snapshot', root);
      if (snap.signed.version !== sm.version) throw new UpdateError(`snapshot: version ${snap.signed.version}, timestamp says ${sm.version} (mix-and-match)`);
      for (const [f, m] of Object.entries((t.snapshot && t.snapshot.signed.meta) || {})) {
        const nm = snap.signed.meta[f];
        if (!nm || nm.version < m.version) throw new UpdateError(`snapshot: ${f} went back (rollback)`);
      }
      t.snapshot = snap;
    }
    notExpired(t.snapshot, 'snapshot', now);

    const tm = t.snapshot.signed.meta['targets.json'];
    if (!t.targets || t.targets.signed.version !== tm.version) {
      const targets = await this.metadata(`${tm.version}.targets.json`, tm.length || 16 << 20, tm);
      await verifyRole(targets, 'targets', root);
      if (targets.signed.version !== tm.version) throw new UpdateError(`targets: version ${targets.signed.version}, snapshot says ${tm.version} (mix-and-match)`);
      t.targets = targets;
    }
    notExpired(t.targets, 'targets', now);
    this.save();
  }

  info(path) {
    const i = this.state.tuf.targets.signed.targets[path];
    if (!i || !i.hashes || !/^[0-9a-f]{64}$/.test(i.hashes.sha256)) throw new UpdateError(`${path} is not a signed target`);
    return { path, sha256: i.hashes.sha256, length: i.length };
  }

  // A signed target's bytes: from the Cache API (re-hashed) or the registry, capped and hash-checked.
  async target(info) {
    const key = new URL(`pv-target/${info.sha256}`, location.href).href;
    const cache = await caches.open('pocketvision-ota');
    const hit = await cache.match(key);
    if (hit) {
      const b = new Uint8Array(await hit.arrayBuffer());
      if (b.length === info.length && (await sha256Hex(b)) === info.sha256) return b;
    }
    const cut = info.path.lastIndexOf('/');
    const url = `/tuf/targets/${info.path.slice(0, cut + 1)}${info.sha256}.${info.path.slice(cut + 1)}`;
    const b = await this.bytes(await this.get(url), info.length, info.path);
    if (b.length !== info.length) throw new UpdateError(`${info.path}: ${b.length} bytes, signed length ${info.length}`);
    if ((await sha256Hex(b)) !== info.sha256) throw new UpdateError(`${info.path}: hash differs from the signed one`);
    await cache.put(key, new Response(b));
    return b;
  }

  // The files of a release's web folder that the page needs (model.json and the model it names).
  async webFiles(release) {
    const listingPath = release.files.web;
    if (!listingPath || !listingPath.endsWith('.folder.json')) throw new UpdateError(`release ${release.version} has no web model`);
    const listing = JSON.parse(new TextDecoder().decode(await this.target(this.info(listingPath))));
    const base = listingPath.slice(0, -'.folder.json'.length);
    const fileInfo = (rel) => {
      if (!listing.files.includes(rel)) throw new UpdateError(`${rel} is not in release ${release.version}`);
      return this.info(`${base}/${rel}`);
    };
    const metaInfo = fileInfo('model.json');
    const meta = JSON.parse(new TextDecoder().decode(await this.target(metaInfo)));
    if (meta.onnxruntime_web !== this.page.runtimeVersion || meta.renderer !== this.page.renderer) {
      throw new UpdateError(`release ${release.version} needs another page (onnxruntime-web ${meta.onnxruntime_web}, ${meta.renderer}); redeploy the web folder`);
    }
    const infos = [fileInfo(meta.model.path), ...meta.model.external_data.map((c) => fileInfo(c.path))];
    const files = {};
    for (const i of infos) files[i.path.slice(base.length + 1)] = await this.target(i);
    return { meta, files, hashes: Object.fromEntries([metaInfo, ...infos].map((i) => [i.path.slice(base.length + 1), i.sha256])) };
  }

  async smokeTest(candidate, release) {
    const smoke = JSON.parse(new TextDecoder().decode(await this.target(this.info(release.files.smoke))));
    const x = fromB64(smoke.inputs);
    const want = fromB64(smoke.outputs.web || smoke.reference);
    const [n, h, w] = x.shape;
    const got = await candidate.run(x.data, n, h, w);
    return sameOutputs(got.data, want.data);
  }

  async check() {
    const r = await this.checkOnce().catch(async (e) => {
      const detail = `update refused: ${e.message || e}`;
      await this.report(this.version, 'failed', detail);
      return { action: 'failed', version: this.version, detail };
    });
    this.log.push(r);
    return r;
  }

  async checkOnce() {
    await this.refresh();
    const planPath = `${this.cfg.model}/channels/${this.cfg.channel}.json`;
    if (!this.state.tuf.targets.signed.targets[planPath]) return { action: 'none', version: this.version, detail: 'no channel yet' };
    const plan = JSON.parse(new TextDecoder().decode(await this.target(this.info(planPath))));
    if (plan.model !== this.cfg.model || plan.channel !== this.cfg.channel) throw new UpdateError(`plan is for ${plan.model}/${plan.channel}`);
    const conn = navigator.connection || {};
    const want = await decide(plan, this.deviceId, { appVersion: this.cfg.app_version, platform: this.cfg.platform,
      metered: conn.type === 'cellular' || !!conn.saveData, current: this.version });
    if (!want) return { action: 'none', version: this.version };
    if (this.state.bad.includes(want.version)) return { action: 'none', version: this.version, detail: `version ${want.version} failed here before` };
    let candidate;
    try {
      const { meta, files, hashes } = await this.webFiles(want);
      candidate = await this.page.open(meta, files);
      const wrong = await this.smokeTest(candidate, want);
      if (wrong) throw new UpdateError(`smoke test failed on version ${want.version}: ${wrong}`);
      await new Promise((res) => (self.requestIdleCallback ? requestIdleCallback(res, { timeout: 500 }) : requestAnimationFrame(res)));
      this.page.swap(candidate, meta, want.version);
      this.version = want.version;
      this.state.installed = { version: want.version, hashes, base: want.files.web.slice(0, -'.folder.json'.length) };
      this.save();
      await this.report(want.version, 'installed', '');
      return { action: 'installed', version: want.version };
    } catch (e) {
      if (candidate) candidate.release();
      this.state.bad.push(want.version);
      this.save();
      const detail = String(e.message || e);
      await this.report(want.version, 'rolled_back', detail);
      return { action: 'failed', version: this.version, detail };
    }
  }

  // The model installed by an earlier visit, from the Cache API (each file re-hashed), or null.
  async installed() {
    const inst = this.state.installed;
    if (!inst) return null;
    try {
      const files = {};
      for (const [rel, sha] of Object.entries(inst.hashes)) {
        const hit = await (await caches.open('pocketvision-ota')).match(new URL(`pv-target/${sha}`, location.href).href);
        const b = hit && new Uint8Array(await hit.arrayBuffer());
        if (!b || (await sha256Hex(b)) !== sha) throw new UpdateError(`${rel}: not in the cache any more`);
        files[rel] = b;
      }
      const meta = JSON.parse(new TextDecoder().decode(files['model.json']));
      this.version = inst.version;
      return { meta, files, version: inst.version };
    } catch (e) {
      this.state.installed = null;
      this.save();
      return null;
    }
  }

  // This install's identity at the registry (POST /v1/devices once, then kept): what reports and corrections carry.
  // deviceId stays the page's own, for its rollout bucket.
  async issuedId() {
    const key = `pv-issued:${this.server}`;
    let id = localStorage.getItem(key);
    if (!id) {
      const r = await this.get('/v1/devices', { method: 'POST' });
      if (!r.ok) throw new UpdateError(`the registry did not issue a device id (HTTP ${r.status})`);
      id = (await r.json()).device_id;
      localStorage.setItem(key, id);
    }
    return id;
  }

  async report(version, state, detail) {
    try {
      const deviceId = await this.issuedId();
      await this.get('/v1/reports', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: this.cfg.model, device_id: deviceId, version, state, detail: detail.slice(0, 500) }) });
    } catch (e) { /* best effort: the page is already safe */ }
  }

  // A user's correction: the photo (unless they keep it private), what the model said and what it is.
  async feedback({ image, predicted, corrected, sharePixels = true, confidence = '', unfamiliar = '' }) {
    const form = new FormData();
    form.set('model', this.cfg.model);
    form.set('device_id', await this.issuedId());
    form.set('predicted', predicted);
    form.set('corrected', corrected);
    // the model's confidence and its unfamiliarity score of the photo: the review queue puts those first
    if (confidence !== '' && confidence != null) form.set('confidence', String(confidence));
    if (unfamiliar !== '' && unfamiliar != null) form.set('unfamiliar', String(unfamiliar));
    if (this.version != null) form.set('version', String(this.version));
    if (sharePixels && image) form.set('image', image, 'photo');
    const r = await this.get('/v1/feedback', { method: 'POST', body: form });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new UpdateError(`feedback refused (HTTP ${r.status}): ${body.detail || ''}`);
    return body;
  }

  start() {
    const tick = () => this.check();
    this.timer = setInterval(tick, this.cfg.interval_s * 1000);
    document.addEventListener('visibilitychange', () => document.visibilityState === 'visible' && tick());
    return tick();
  }
}
