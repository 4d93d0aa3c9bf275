// The search page: no framework, no build. State is the current query (an uploaded file or a stored image id) and
// the chosen encoder; every change re-runs the search. All server calls go through `api`, which turns error bodies
// ({ error: { code, message } }) into thrown Errors whose message is shown to the user.

const $ = (id) => document.getElementById(id);
const els = {
  stats: $('stats'), formats: $('formats'), dropzone: $('dropzone'), file: $('file'), preview: $('preview'), auto: $('auto'), slider: $('cost-slider'), choice: $('choice'),
  k: $('k'), where: $('where'), search: $('search'), add: $('add'), error: $('error'), status: $('status'), results: $('results'), hint: $('results-hint'),
};

/** The current query: { file } for an upload, { id, label } for a stored image; null before the first pick. */
let query = null;
let searchSeq = 0; // answers to superseded searches are dropped

async function api(path, init) {
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new Error('The server did not answer. Is it still running?');
  }
  const body = res.headers.get('content-type')?.includes('json') ? await res.json() : null;
  if (!res.ok) throw new Error(body?.error?.message ? `${body.error.message} (${res.status} ${body.error.code})` : `Request failed with HTTP ${res.status}`);
  return body;
}

function showError(err) {
  els.error.textContent = err ? err.message : '';
  els.error.hidden = !err;
}

const fmtFlops = (f) => (f >= 1e9 ? `${(f / 1e9).toFixed(2)} GFLOPs` : `${(f / 1e6).toFixed(1)} MFLOPs`);
const fmtMs = (ms) => (ms === null || ms === undefined ? '… ms' : `${ms < 10 ? ms.toFixed(2) : ms.toFixed(0)} ms`);

// ---- the cost control: auto, or a slider over the encoders from cheapest to most accurate ---------------------

let encoders = []; // /api/encoders: S..XL and the calibrated frontier, by FLOPs

function selectedFfn() {
  return els.auto.checked ? 'auto' : encoders[Number(els.slider.value)]?.spec;
}

const figuresText = (e) => {
  const acc = e.accuracy !== null ? ` · 1-NN ${(100 * e.accuracy).toFixed(1)}%` : '';
  const adapted = e.adapter ? ' · with its query adapter' : '';
  return `${fmtFlops(e.flops)} (${Math.round(100 * e.flopsRel)}% of XL) · ${fmtMs(e.encodeMs)}${acc}${adapted}`;
};

function showChoice() {
  const e = encoders[Number(els.slider.value)];
  els.slider.disabled = els.auto.checked || encoders.length === 0;
  if (!e) return;
  els.slider.setAttribute('aria-valuetext', `${e.spec}: ${Math.round(100 * e.flopsRel)}% of XL's FLOPs`);
  els.choice.textContent = els.auto.checked ? 'auto: the server picks the encoder for each query' : `${e.spec} · ${figuresText(e)}`;
  els.choice.title = `${e.params.toLocaleString()} parameters; median batch-1 encode time measured by the server at start`;
}

function renderEncoders(data) {
  const current = encoders[Number(els.slider.value)]?.spec ?? data.default;
  encoders = data.encoders;
  els.slider.max = String(encoders.length - 1);
  const at = encoders.findIndex((e) => e.spec === current);
  els.slider.value = String(at >= 0 ? at : encoders.length - 1);
  showChoice();
  // Mix'n'Match timings are measured in the background after start: refresh until they are all in.
  if (data.encoders.some((e) => e.encodeMs === null)) setTimeout(loadEncoders, 2000);
}

els.auto.addEventListener('change', () => {
  showChoice();
  if (query) runSearch();
});
els.slider.addEventListener('input', showChoice);
els.slider.addEventListener('change', () => query && runSearch());

async function loadEncoders() {
  try {
    renderEncoders(await api('/api/encoders'));
  } catch (err) {
    showError(err);
  }
}

async function loadStats() {
  try {
    const s = await api('/api/stats');
    els.stats.textContent = `${s.indexed.toLocaleString()} images indexed · model ${s.modelId}`;
    showFormats(s.formats);
  } catch {
    els.stats.textContent = 'Stats unavailable';
  }
}

/** The formats the server accepts (the one list in src/data/formats.ts): the picker offers those only. */
function showFormats(formats) {
  const labels = formats.map((f) => f.label);
  els.formats.textContent = labels.length > 1 ? `${labels.slice(0, -1).join(', ')} or ${labels.at(-1)}` : labels.join('');
  els.file.accept = formats.flatMap((f) => [f.contentType, ...f.extensions]).join(',');
}

// ---- choosing the query ----------------------------------------------------------------------------------------

function useFile(file) {
  if (!file) return;
  query = { file };
  URL.revokeObjectURL(els.preview.src);
  els.preview.src = URL.createObjectURL(file);
  els.preview.alt = `Query image: ${file.name}`;
  els.preview.hidden = false;
  els.add.disabled = false;
  els.search.disabled = false;
  runSearch();
}

function useStored(id, label, thumbUrl) {
  query = { id, label };
  els.preview.src = thumbUrl;
  els.preview.alt = `Query image: stored image ${id}${label ? ` (${label})` : ''}`;
  els.preview.hidden = false;
  els.add.disabled = true; // already in the index
  els.search.disabled = false;
  runSearch();
}

els.file.addEventListener('change', () => useFile(els.file.files[0]));
for (const type of ['dragenter', 'dragover']) {
  els.dropzone.addEventListener(type, (ev) => {
    ev.preventDefault();
    els.dropzone.classList.add('over');
  });
}
for (const type of ['dragleave', 'drop']) els.dropzone.addEventListener(type, () => els.dropzone.classList.remove('over'));
els.dropzone.addEventListener('drop', (ev) => {
  ev.preventDefault();
  const file = ev.dataTransfer?.files?.[0];
  if (file) useFile(file);
});
els.search.addEventListener('click', () => query && runSearch());
els.k.addEventListener('change', () => query && runSearch());
els.where.addEventListener('change', () => query && runSearch());

/** The filter's clauses (src/index/filter.ts), as typed: separated by semicolons; the server checks them. */
const whereClauses = () => els.where.value.split(';').map((c) => c.trim()).filter((c) => c !== '');

// ---- search ----------------------------------------------------------------------------------------------------

async function runSearch() {
  const seq = ++searchSeq;
  const ffn = selectedFfn();
  const k = els.k.value || '12';
  const where = whereClauses();
  showError(null);
  els.status.textContent = `Searching with ${ffn ?? 'the default encoder'}…`;
  els.results.setAttribute('aria-busy', 'true');
  try {
    let init;
    if (query.file) {
      const form = new FormData();
      form.append('image', query.file, query.file.name);
      if (ffn) form.append('ffn', ffn);
      form.append('k', k);
      for (const clause of where) form.append('where', clause);
      init = { method: 'POST', body: form };
    } else {
      init = { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id: query.id, k: Number(k), ...(ffn ? { ffn } : {}), ...(where.length ? { where } : {}) }) };
    }
    const r = await api('/api/search', init);
    if (seq !== searchSeq) return;
    renderResults(r);
  } catch (err) {
    if (seq !== searchSeq) return;
    els.status.textContent = '';
    els.results.replaceChildren();
    showError(err);
  } finally {
    if (seq === searchSeq) els.results.removeAttribute('aria-busy');
  }
}

/** Why this encoder answered, when the server chose it. */
function whyText(e) {
  if (e.chosenBy === 'cascade' && e.tried) return e.escalated ? ` (auto: ${e.tried.join(' then ')}, the first result was uncertain: ${e.why})` : ` (auto: ${e.tried[0]} was confident)`;
  if (e.chosenBy === 'load') return ' (auto, stepped down: the server is under load)';
  if (e.chosenBy === 'budget') return ' (best within the budget)';
  if (e.reason?.startsWith('auto')) return ' (auto: no calibrated cascade, the most accurate encoder)';
  return '';
}

function renderResults(r) {
  const c = r.cost;
  const encode = c.flops > 0 ? `${fmtFlops(c.flops)} (${Math.round(100 * c.flopsRel)}% of XL), encode ${fmtMs(c.encodeMs)}` : 'stored embedding, no encoding';
  const filtered = whereClauses().length ? ' (filtered)' : '';
  els.status.textContent = `${r.results.length} results${filtered} · encoder ${c.ffn}${whyText(r.encoder)}: ${encode}, search ${fmtMs(c.searchMs)}`;
  els.status.title = r.encoder.reason ?? '';
  els.status.dataset.ffn = c.ffn;
  els.hint.hidden = true;
  els.results.replaceChildren(
    ...r.results.map((hit) => {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.title = `${hit.name}: search with this image`;
      const img = Object.assign(document.createElement('img'), { src: hit.thumbUrl, alt: hit.label ?? hit.name, loading: 'lazy', width: 128, height: 128 });
      const caption = Object.assign(document.createElement('span'), { className: 'caption' });
      const label = Object.assign(document.createElement('span'), { className: 'label', textContent: hit.label ?? hit.name });
      const score = Object.assign(document.createElement('span'), { className: 'score', textContent: hit.score.toFixed(3) });
      if (hit.region) Object.assign(score, { textContent: `${score.textContent} · part`, title: 'matched a part of this image (one of its region vectors): the query looks like a crop of it' });
      caption.append(label, score);
      button.append(img, caption);
      button.addEventListener('click', () => useStored(hit.id, hit.label, hit.thumbUrl));
      li.append(button);
      return li;
    }),
  );
}

// ---- adding the uploaded image ---------------------------------------------------------------------------------

els.add.addEventListener('click', async () => {
  if (!query?.file) return;
  showError(null);
  els.add.disabled = true;
  try {
    const form = new FormData();
    form.append('images', query.file, query.file.name);
    const r = await api('/api/images', { method: 'POST', body: form });
    const img = r.images[0];
    els.status.textContent = img.created ? `Added ${img.name} to the index as image ${img.id}.` : `${img.name} is already in the index (image ${img.id}).`;
    loadStats();
  } catch (err) {
    showError(err);
    els.add.disabled = false;
  }
});

loadEncoders();
loadStats();
