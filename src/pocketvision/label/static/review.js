// Review users' corrections: one key per decision; every decision is saved on the registry at once.
const $ = (id) => document.getElementById(id);
const state = { items: [], labels: [], at: 0 };
window.review = state;

async function api(path, body) {
  const r = await fetch(path, body ? { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) } : {});
  const out = await r.json();
  if (!r.ok) throw new Error(out.error || `HTTP ${r.status}`);
  return out;
}

function show() {
  const it = state.items[state.at];
  const open = state.items.filter((i) => i.status === 'new').length;
  $('stats').textContent = `${state.at + 1} / ${state.items.length} · ${open} to review`;
  if (!it) { $('prompt').textContent = 'No corrections yet.'; $('choices').replaceChildren(); return; }
  const sure = it.confidence != null ? ` (${Math.round(it.confidence * 100)}% sure)` : '';
  $('prompt').textContent = `#${it.id} (version ${it.version ?? '?'}): the model said “${it.predicted}”${sure}, ` +
    `the user says “${it.corrected}” · ${it.status}${it.status === 'confirmed' ? ` as ${it.label}` : ''}`;
  $('photo').hidden = !it.image_type;
  $('private').hidden = !!it.image_type;
  if (it.image_type) $('photo').src = `api/image/${it.id}`;
  $('choices').replaceChildren(...state.labels.map((l, k) => {
    const b = document.createElement('button');
    b.textContent = `${k + 1}: ${l}`;
    b.onclick = () => decide('confirmed', l);
    return b;
  }), Object.assign(document.createElement('button'), { textContent: 'X: reject', onclick: () => decide('rejected') }));
}

async function decide(status, label) {
  const it = state.items[state.at];
  if (!it) return;
  try {
    const r = await api(`api/review/${it.id}`, { status, label: status === 'confirmed' ? (label || it.corrected) : null });
    Object.assign(it, { status: r.status, label: r.label });
    $('error').textContent = '';
    const next = state.items.findIndex((i, k) => k > state.at && i.status === 'new');
    if (next >= 0) state.at = next;
  } catch (e) {
    $('error').textContent = String(e.message || e);
  }
  show();
}

document.addEventListener('keydown', (e) => {
  const n = Number(e.key);
  if (n >= 1 && n <= state.labels.length) decide('confirmed', state.labels[n - 1]);
  else if (e.key === 'Enter') decide('confirmed');
  else if (e.key === 'x' || e.key === 'X') decide('rejected');
  else if (e.key === 'ArrowRight') { state.at = Math.min(state.at + 1, state.items.length - 1); show(); }
  else if (e.key === 'ArrowLeft') { state.at = Math.max(state.at - 1, 0); show(); }
});

api('api/items').then((d) => {
  Object.assign(state, { items: d.items, labels: d.labels });
  document.title = `review corrections: ${d.model}`;
  const first = d.items.findIndex((i) => i.status === 'new');
  state.at = first >= 0 ? first : 0;
  show();
  state.ready = true;
}).catch((e) => { $('error').textContent = String(e.message || e); state.ready = true; });
