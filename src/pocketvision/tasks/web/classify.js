// Renderer of classification models in the exported page (loaded by app.js from model.json's "renderer").
// The decision rule is the same as pocketvision.tasks.classify.decision.decide: a binary model with a stored
// threshold says the positive label only when its probability reaches the threshold.

function decide(probs, labels, threshold) {
  let k = probs.indexOf(Math.max(...probs));
  if (threshold && threshold.value != null && labels.length === 2) {
    const pos = threshold.positive;
    k = probs[pos] >= threshold.value ? pos : 1 - pos;
  }
  return { label: labels[k], index: k, confidence: probs[k],
    probabilities: Object.fromEntries(labels.map((l, i) => [l, probs[i]])) };
}

export function render({ output, meta, page: $ }) {
  if (!meta.labels.length) {  // a starter page: no classes of its own, every answer is one taught in the page
    $('result').textContent = 'no class yet: teach one below';
    $('probs').innerHTML = '';
    return {};
  }
  const result = decide(Array.from(output.data), meta.labels, meta.threshold);
  // How unlike the training photos (computed in the graph); flagged above 95% of the val photos' scores.
  const u = output.extra && output.extra.unfamiliar ? output.extra.unfamiliar[0] : null;
  if (u != null) {
    result.unfamiliar = u;
    if (meta.unfamiliar && meta.unfamiliar.flag_above != null) result.unfamiliar_flag = u > meta.unfamiliar.flag_above;
  }
  $('result').textContent = `${result.label} (${(100 * result.confidence).toFixed(1)}%)` +
    (result.unfamiliar_flag ? ' · this photo looks unlike the ones the model learned from' : '');
  $('probs').innerHTML = '';
  for (const [label, p] of Object.entries(result.probabilities)) {
    const row = document.createElement('div');
    row.innerHTML = `<span style="width:8em"></span><span class="bar" style="width:${(p * 12).toFixed(2)}em"></span>
      <span>${(100 * p).toFixed(1)}%</span>`;
    row.firstChild.textContent = label;  // a label is data, never markup
    $('probs').appendChild(row);
  }
  return result;
}
