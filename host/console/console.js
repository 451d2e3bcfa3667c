// WasmWiz console: a page of the server's own API, served from the binary.
//
// Rules this file keeps:
// - The API key lives in sessionStorage only and travels as the
//   `Authorization` header; never in a URL, a cookie or the page's text.
// - Every string from the API is put in the page as text (`textContent`,
//   attribute values set one by one): no HTML is ever built from data.
// - Nothing is fetched from another origin.

const KEY_STORE = 'wasmwiz.key';
const API = '/api/v1';

// ---------------------------------------------------------------- elements

/// An element: `h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child)`.
/// Strings become text nodes; `null`/`false` children are skipped.
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (name === 'value' || name === 'checked' || name === 'disabled' || name === 'selected') {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}

// ---------------------------------------------------------------- formatting

const number = new Intl.NumberFormat();
function n(value) {
  return value === null || value === undefined ? '—' : number.format(value);
}

function bytes(value) {
  if (value === null || value === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = value;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function when(text) {
  if (!text) return '—';
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return text;
  return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

function ago(text) {
  if (!text) return 'never';
  const seconds = Math.round((Date.now() - new Date(text).getTime()) / 1000);
  if (seconds < 60) return 'just now';
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} days ago`;
}

function timeElement(text) {
  return h('time', { datetime: text, title: text }, when(text));
}

function shortDigest(digest) {
  return digest ? digest.replace(/^sha256:/, '').slice(0, 12) : '';
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/// Headlines for the statuses README.md gives, put before the API's own
/// message so a refusal reads as a sentence.
const HEADLINES = {
  400: 'Refused',
  401: 'Not signed in',
  403: 'Not allowed',
  404: 'Not found',
  409: 'Conflict',
  413: 'Too large',
  422: 'This component cannot run here',
  429: 'Too many requests',
  503: 'Unavailable',
};

function headline(error) {
  if (!(error instanceof ApiError)) return 'Something went wrong';
  return HEADLINES[error.status] || `Error ${error.status}`;
}

function key() {
  return sessionStorage.getItem(KEY_STORE);
}

async function errorOf(status, text) {
  let code = 'error';
  let message = text || `the server answered ${status}`;
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    // Not JSON (a proxy's page): the status says enough.
    message = `the server answered ${status}`;
  }
  return new ApiError(status, code, message);
}

/// Calls the API; a `401` signs the console out (the key was revoked).
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${key()}` };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (_) {
    throw new ApiError(0, 'network', 'the server cannot be reached; check that it is running');
  }
  const text = await response.text();
  if (!response.ok) {
    const error = await errorOf(response.status, text);
    if (response.status === 401) signOut('Your key is no longer valid (revoked, or mistyped). Sign in again.');
    throw error;
  }
  return text ? JSON.parse(text) : null;
}

/// Uploads a component with upload progress (fetch has none): `onPhase`
/// gets ('upload', sent, total) while the bytes go, then ('compile').
function uploadComponent(file, name, onPhase) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `${API}/components?name=${encodeURIComponent(name)}`);
    xhr.setRequestHeader('Authorization', `Bearer ${key()}`);
    xhr.setRequestHeader('Content-Type', 'application/wasm');
    xhr.upload.addEventListener('progress', (e) => onPhase('upload', e.loaded, e.lengthComputable ? e.total : file.size));
    xhr.upload.addEventListener('load', () => onPhase('compile'));
    xhr.addEventListener('load', async () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(JSON.parse(xhr.responseText));
      } else {
        const error = await errorOf(xhr.status, xhr.responseText);
        if (xhr.status === 401) signOut('Your key is no longer valid (revoked, or mistyped). Sign in again.');
        reject(error);
      }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network', 'the upload was cut off; check the connection and try again')));
    xhr.send(file);
  });
}

// ---------------------------------------------------------------- the page

const state = {
  me: null, // GET /api/v1/me
  view: null, // the current page's cleanup
  notice: null, // a message for the sign-in form
};

const app = () => document.getElementById('app');

function toast(message, kind) {
  let region = document.querySelector('.toast-region');
  if (!region) {
    region = h('div', { class: 'toast-region', role: 'status', 'aria-live': 'polite' });
    document.body.append(region);
  }
  const item = h('div', { class: `toast ${kind || ''}` }, message);
  region.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 8000 : 4000);
}

function errorNotice(error) {
  return h('div', { class: 'notice error', role: 'alert' }, h('strong', {}, `${headline(error)}: `), error.message);
}

async function copy(text, what) {
  try {
    await navigator.clipboard.writeText(text);
    toast(`${what} copied`);
  } catch (_) {
    toast(`Select the ${what.toLowerCase()} and copy it by hand`, 'error');
  }
}

/// Asks before something that cannot be undone; resolves true on confirm.
function confirmDialog(title, text, action) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { 'aria-labelledby': 'dialog-title' });
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    append(dialog, [
      h('h2', { id: 'dialog-title' }, title),
      h('p', {}, text),
      h('div', { class: 'actions' },
        h('button', { type: 'button', onclick: () => done(false) }, 'Cancel'),
        h('button', { type: 'button', class: 'primary danger', onclick: () => done(true) }, action)),
    ]);
    dialog.addEventListener('cancel', () => resolve(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  state.me = null;
  state.notice = message || null;
  if (location.hash !== '#/signin') location.hash = '#/signin';
  else render();
}

const PAGES = [
  { path: 'deployments', title: 'Deployments', view: deploymentsPage },
  { path: 'deploy', title: 'Deploy', view: deployPage, scope: 'deploy' },
  { path: 'triggers', title: 'Schedules & queues', view: triggersPage },
  { path: 'usage', title: 'Usage', view: usagePage },
  { path: 'logs', title: 'Logs', view: logsPage },
  { path: 'keys', title: 'Keys', view: keysPage },
  { path: 'admin', title: 'Operators', view: adminPage, scope: 'admin' },
];

/// Admin keys may do everything a tenant's key may.
function hasScope(scope) {
  return !!state.me && (state.me.scopes.includes(scope) || state.me.scopes.includes('admin'));
}

async function render() {
  if (state.view) {
    state.view();
    state.view = null;
  }
  const root = app();
  clear(root);
  if (!key()) {
    root.append(signInPage());
    return;
  }
  if (!state.me) {
    try {
      state.me = await api('GET', `${API}/me`);
    } catch (error) {
      if (error.status !== 401) {
        root.append(h('main', { id: 'main' }, errorNotice(error), h('p', {}, h('button', { onclick: render }, 'Try again'))));
      }
      return;
    }
  }
  const [route, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const page = PAGES.find((p) => p.path === route && (!p.scope || hasScope(p.scope))) || PAGES[0];
  const main = h('main', { id: 'main', tabindex: '-1' });
  root.append(h('div', { class: 'shell' }, sideBar(page), main));
  document.title = `${page.title} · WasmWiz console`;
  try {
    state.view = (await page.view(main, rest.map(decodeURIComponent))) || null;
  } catch (error) {
    if (error.status !== 401) main.append(errorNotice(error));
  }
}

function sideBar(current) {
  const links = PAGES.filter((p) => !p.scope || hasScope(p.scope)).map((p) =>
    h('li', {}, h('a', { href: `#/${p.path}`, 'aria-current': p === current ? 'page' : null }, p.title)));
  return h('header', { class: 'side' },
    h('div', { class: 'brand' }, h('img', { src: '/console/icon.svg', alt: '' }), 'WasmWiz'),
    h('nav', { 'aria-label': 'Console pages' }, h('ul', {}, links)),
    h('div', { class: 'who' },
      h('div', {}, 'Tenant ', h('strong', { 'data-testid': 'tenant' }, state.me.tenant)),
      h('div', {}, 'Tier ', h('strong', {}, state.me.tier)),
      h('div', {}, 'Key ', h('code', {}, state.me.prefix), ' · ', state.me.scopes.join(', ')),
      h('p', {}, h('button', { type: 'button', class: 'small', onclick: () => signOut('Signed out.') }, 'Sign out'))));
}

function pageHead(title, lead, ...extra) {
  return h('div', { class: 'head' }, h('div', {}, h('h1', {}, title), lead ? h('p', { class: 'lead' }, lead) : null), ...extra);
}

// ---------------------------------------------------------------- sign in

function signInPage() {
  const input = h('input', { type: 'password', id: 'key', name: 'key', autocomplete: 'off', spellcheck: 'false', required: true, placeholder: 'ww_…' });
  const problem = h('div', { 'aria-live': 'polite' });
  if (state.notice) problem.append(h('div', { class: 'notice' }, state.notice));
  const form = h('form', { class: 'stack', onsubmit: async (e) => {
    e.preventDefault();
    const value = input.value.trim();
    clear(problem);
    if (!/^ww_[0-9A-Za-z]{20,}$/.test(value)) {
      problem.append(h('div', { class: 'notice error', role: 'alert' }, 'That is not an API key: keys start with ww_ followed by letters and digits.'));
      return;
    }
    sessionStorage.setItem(KEY_STORE, value);
    state.me = null;
    state.notice = null;
    try {
      state.me = await api('GET', `${API}/me`);
    } catch (error) {
      sessionStorage.removeItem(KEY_STORE);
      clear(problem);
      problem.append(error.status === 401
        ? h('div', { class: 'notice error', role: 'alert' }, 'This key is not valid: it is unknown or revoked.')
        : errorNotice(error));
      return;
    }
    if (location.hash === '#/signin' || !location.hash) location.hash = '#/deployments';
    else render();
  } },
  h('div', {}, h('label', { for: 'key' }, 'API key'), input,
    h('p', { class: 'hint' }, 'Kept in this tab only, until you sign out or close it. Create keys with ', h('code', {}, 'wasmwiz admin key create'), ' or on the Keys page.')),
  problem,
  h('div', {}, h('button', { type: 'submit', class: 'primary' }, 'Sign in')));
  setTimeout(() => input.focus(), 0);
  return h('main', { id: 'main', class: 'signin' },
    h('div', { class: 'panel' },
      h('div', { class: 'brand' }, h('img', { src: '/console/icon.svg', alt: '' }), 'WasmWiz console'),
      form));
}

// ---------------------------------------------------------------- deployments

// Tenants' routes answer on the node's public URL, never on the console's
// own origin (GET /api/v1/me names it): a route bound to a host answers
// on that host, with the public URL's scheme and port.
function invokeUrl(deployment) {
  let path = deployment.route.replace(/\/\.\.\.$/, '/');
  if (path === '') path = '/';
  const base = new URL(state.me.public_url);
  if (deployment.host) base.hostname = deployment.host;
  return `${base.origin}${path}`;
}

function statusBadge(deployment) {
  const status = deployment.status;
  if (!status) return h('span', { class: 'badge muted' }, 'loading');
  if (status.state === 'serving') return h('span', { class: 'badge ok' }, 'serving');
  if (status.state === 'compiling') return h('span', { class: 'badge warn', title: status.serving_version ? `serving v${status.serving_version} meanwhile` : '' }, 'compiling');
  return h('span', { class: 'badge bad', title: status.error || '' }, 'failed');
}

async function componentNames() {
  const list = await api('GET', `${API}/components`);
  return new Map(list.map((c) => [c.digest, c]));
}

async function deploymentsPage(main, [id]) {
  if (id) return deploymentPage(main, id);
  const [deployments, components] = await Promise.all([api('GET', `${API}/deployments`), componentNames()]);
  main.append(pageHead('Deployments', 'Every route you serve, with its live version.',
    hasScope('deploy') ? h('a', { class: 'button', href: '#/deploy' }, 'Deploy a component') : null));
  if (deployments.length === 0) {
    main.append(h('div', { class: 'panel empty' }, h('strong', {}, 'No deployments yet'),
      'Upload a component and give it a route: ', h('a', { href: '#/deploy' }, 'deploy one'), ', or use ', h('code', {}, 'wasmwiz deploy'), '.'));
    return null;
  }
  deployments.sort((a, b) => a.route.localeCompare(b.route));
  const rows = deployments.map((d) => {
    const component = components.get(d.component);
    const url = invokeUrl(d);
    return h('tr', { dataset: { route: d.route } },
      h('td', { class: 'wrap' }, h('a', { href: `#/deployments/${encodeURIComponent(d.id)}` }, h('code', {}, d.route))),
      h('td', {}, `v${d.version}`),
      h('td', { class: 'wrap' }, component ? component.name : '', ' ', h('span', { class: 'hint mono', title: d.component }, shortDigest(d.component))),
      h('td', { class: 'wrap' }, d.host || h('span', { class: 'hint' }, 'any')),
      h('td', {}, statusBadge(d)),
      h('td', {}, timeElement(d.created_at)),
      h('td', {}, h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'small', 'aria-label': `Copy URL of ${d.route}`, onclick: () => copy(url, 'URL') }, 'Copy URL'),
        h('a', { class: 'button small', href: `#/deployments/${encodeURIComponent(d.id)}` }, 'History'),
        hasScope('deploy') ? h('button', { type: 'button', class: 'small danger', onclick: () => removeDeployment(d) }, 'Delete') : null)));
  });
  main.append(h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { class: 'sr-only' }, 'Deployments'),
    h('thead', {}, h('tr', {}, ['Route', 'Live', 'Component', 'Host', 'State', 'Deployed', ''].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows))));
  return null;
}

async function removeDeployment(deployment) {
  const sure = await confirmDialog(`Delete ${deployment.route}?`,
    `The route stops answering (404) on every node at once, and its version history goes with it. The component stays uploaded.`,
    'Delete deployment');
  if (!sure) return;
  try {
    await api('DELETE', `${API}/deployments/${encodeURIComponent(deployment.id)}`);
    toast(`${deployment.route} deleted`);
    location.hash = '#/deployments';
    render();
  } catch (error) {
    toast(`${headline(error)}: ${error.message}`, 'error');
  }
}

async function deploymentPage(main, id) {
  const [deployments, components, versions] = await Promise.all([
    api('GET', `${API}/deployments`), componentNames(), api('GET', `${API}/deployments/${encodeURIComponent(id)}/versions`)]);
  const d = deployments.find((x) => x.id === id);
  if (!d) {
    main.append(h('div', { class: 'panel empty' }, h('strong', {}, 'This deployment is gone'), h('a', { href: '#/deployments' }, 'Back to deployments')));
    return null;
  }
  const url = invokeUrl(d);
  const problem = h('div', { 'aria-live': 'polite' });
  const rollback = async (version) => {
    clear(problem);
    try {
      const body = version ? { version } : undefined;
      const done = await api('POST', `${API}/deployments/${encodeURIComponent(id)}/rollback`, body);
      toast(`${d.route} is now at v${done.version}`);
      render();
    } catch (error) {
      problem.append(errorNotice(error));
    }
  };
  const promote = async () => {
    clear(problem);
    try {
      const done = await api('POST', `${API}/deployments/${encodeURIComponent(id)}/promote`);
      toast(`${d.route} is now at v${done.version}`);
      render();
    } catch (error) {
      problem.append(errorNotice(error));
    }
  };
  const canDeploy = hasScope('deploy');
  const r = d.rollout;
  main.append(pageHead(d.route, null,
    h('div', { class: 'actions' },
      canDeploy && r ? h('button', { type: 'button', class: 'primary', onclick: () => promote() }, `Promote v${r.version}`) : null,
      canDeploy && r ? h('button', { type: 'button', onclick: () => rollback() }, 'Stop rollout') : null,
      canDeploy && !r && versions.length > 1 ? h('button', { type: 'button', class: 'primary', onclick: () => rollback() }, 'Roll back') : null,
      canDeploy ? h('button', { type: 'button', class: 'danger', onclick: () => removeDeployment(d) }, 'Delete') : null)));
  main.append(problem);
  const component = components.get(d.component);
  main.append(h('div', { class: 'panel' }, h('dl', { class: 'facts' },
    h('dt', {}, 'Invoke at'), h('dd', {}, h('code', { 'data-testid': 'invoke-url' }, url), ' ', h('button', { type: 'button', class: 'small', onclick: () => copy(url, 'URL') }, 'Copy')),
    h('dt', {}, 'Live version'), h('dd', {}, `v${d.version} `, statusBadge(d)),
    h('dt', {}, 'Component'), h('dd', {}, component ? component.name : '', ' ', h('code', { class: 'hint' }, d.component)),
    h('dt', {}, 'Host'), h('dd', {}, d.host || 'any host'),
    h('dt', {}, 'Instance reuse'), h('dd', {}, d.max_instance_reuse > 1 ? `up to ${n(d.max_instance_reuse)} requests per instance` : 'a fresh instance for every request'),
    h('dt', {}, 'Configuration'), h('dd', {}, Object.keys(d.config).length ? h('ul', {}, Object.entries(d.config).map(([k, v]) => h('li', {}, h('code', {}, k), ' = ', h('code', {}, v)))) : 'none'),
    h('dt', {}, 'Secrets'), h('dd', {}, d.secrets.length ? d.secrets.map((name, i) => [i ? ', ' : '', h('code', {}, name)]) : 'none'),
    h('dt', {}, 'Outbound hosts'), h('dd', {}, d.allowed_outbound_hosts.length ? d.allowed_outbound_hosts.map((x, i) => [i ? ', ' : '', h('code', {}, x)]) : 'none'),
    d.status && d.status.error ? [h('dt', {}, 'Compile error'), h('dd', {}, d.status.error)] : null)));
  if (r) {
    const side = (t) => t ? `${n(t.requests)} requests, ${n(t.errors)} errors (${t.error_rate_percent}%)` : 'none yet';
    const here = r.on_this_node;
    main.append(h('h2', {}, 'Canary rollout'));
    main.append(h('div', { class: 'panel', 'data-testid': 'rollout' }, h('dl', { class: 'facts' },
      h('dt', {}, 'Split'), h('dd', {}, `v${r.version} (canary) ${r.percent}%, v${d.version} (live) ${100 - r.percent}%`),
      h('dt', {}, 'Next step'), h('dd', {}, r.next_step_at ? timeElement(r.next_step_at) : 'none: promote it, or stop the rollout'),
      h('dt', {}, 'Clients'), h('dd', {}, r.sticky_header ? ['kept on one side by ', h('code', {}, r.sticky_header)] : 'split per request'),
      h('dt', {}, 'Stops by itself'), h('dd', {}, `when its error rate exceeds the live version's by more than ${r.max_error_increase} points after ${n(r.min_requests)} of its requests on a node`),
      h('dt', {}, 'Canary on this node'), h('dd', {}, side(here && here.canary), here && here.stopped ? h('span', { class: 'badge bad' }, 'stopped') : null),
      h('dt', {}, 'Live on this node'), h('dd', {}, side(here && here.stable)))));
  }
  main.append(h('h2', {}, 'Versions'));
  const rows = [...versions].reverse().map((v) => {
    const vc = components.get(v.component);
    const periods = (v.live_periods || []).map((p) => h('div', {}, `${when(p.from)} – ${p.until ? when(p.until) : 'now'}`, h('span', { class: 'hint' }, ` (${p.reason.replace(/_/g, ' ')})`)));
    const ro = v.rollout;
    const rolled = ro ? h('div', { class: 'hint' }, `canary: ${ro.state.replace(/_/g, ' ')}${ro.reason ? ` (${ro.reason})` : ''}`) : null;
    return h('tr', { dataset: { version: String(v.version) } },
      h('td', {}, `v${v.version} `, v.live ? h('span', { class: 'badge ok' }, 'live') : null, rolled),
      h('td', { class: 'wrap' }, vc ? vc.name : '', ' ', h('span', { class: 'hint mono', title: v.component }, shortDigest(v.component))),
      h('td', {}, timeElement(v.created_at)),
      h('td', {}, periods.length ? periods : h('span', { class: 'hint' }, 'never live')),
      h('td', {}, canDeploy && !v.live ? h('button', { type: 'button', class: 'small', onclick: () => rollback(v.version) }, `Roll back to v${v.version}`) : null));
  });
  main.append(h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { class: 'sr-only' }, 'Versions'),
    h('thead', {}, h('tr', {}, ['Version', 'Component', 'Created', 'Live', ''].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows))));
  return null;
}

// ---------------------------------------------------------------- deploy

/// `NAME=value` lines into an object; throws naming a bad line.
function pairs(text, what) {
  const out = {};
  text.split('\n').map((l) => l.trim()).filter(Boolean).forEach((line, i) => {
    const at = line.indexOf('=');
    if (at <= 0) throw new Error(`${what}, line ${i + 1}: write NAME=value`);
    out[line.slice(0, at).trim()] = line.slice(at + 1);
  });
  return out;
}

async function deployPage(main) {
  const tiers = await api('GET', `${API}/tiers`);
  const tier = tiers.find((t) => t.name === state.me.tier);
  main.append(pageHead('Deploy', 'Upload a WASI HTTP component and give it a route. Deploying to a route you already serve makes a new version and switches to it at once.'));
  let file = null;
  const fileInput = h('input', { type: 'file', id: 'file', accept: '.wasm,application/wasm', class: 'sr-only' });
  const chosen = h('div', { 'data-testid': 'chosen' }, h('strong', {}, 'Drop a .wasm file here'), h('div', {}, 'or ', h('label', { for: 'file', class: 'button' }, 'choose a file'), ' (a component built for ', h('code', {}, 'wasm32-wasip2'), ')'));
  const drop = h('div', { class: 'drop' }, chosen, fileInput);
  const name = h('input', { type: 'text', id: 'name', required: true, maxlength: '200' });
  const route = h('input', { type: 'text', id: 'route', required: true, spellcheck: 'false' });
  const host = h('input', { type: 'text', id: 'host', spellcheck: 'false', placeholder: 'optional' });
  const config = h('textarea', { id: 'config', spellcheck: 'false', placeholder: 'GREETING=hello' });
  const secrets = h('textarea', { id: 'secrets', spellcheck: 'false', placeholder: 'API_TOKEN=…' });
  const outbound = h('textarea', { id: 'outbound', spellcheck: 'false', placeholder: 'https://api.example.com' });
  const reuse = h('input', { type: 'number', id: 'reuse', min: '1', max: '10000', value: '1' });
  const progress = h('progress', { max: '100', value: '0', id: 'progress', 'aria-label': 'Upload progress' });
  const phase = h('div', { class: 'hint', 'aria-live': 'polite' });
  const progressBox = h('div', { hidden: true, 'data-testid': 'progress' }, progress, phase);
  const result = h('div', { 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Upload and deploy');

  const choose = (f) => {
    if (!f) return;
    file = f;
    clear(chosen);
    append(chosen, [h('strong', {}, f.name), ` · ${bytes(f.size)} · `, h('label', { for: 'file', class: 'button small' }, 'choose another')]);
    const base = f.name.replace(/\.wasm(\.gz)?$/i, '');
    if (!name.value) name.value = base;
    if (!route.value) route.value = `/${state.me.tenant}/${base.toLowerCase().replace(/[^a-z0-9_-]+/g, '-').replace(/^-+|-+$/g, '') || 'app'}/...`;
  };
  fileInput.addEventListener('change', () => choose(fileInput.files[0]));
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    choose(e.dataTransfer.files[0]);
  });

  const form = h('form', { class: 'stack', onsubmit: async (e) => {
    e.preventDefault();
    clear(result);
    if (!file) {
      result.append(h('div', { class: 'notice error', role: 'alert' }, 'Choose a .wasm file first.'));
      return;
    }
    if (tier && file.size > tier.max_component_bytes) {
      result.append(h('div', { class: 'notice error', role: 'alert' }, h('strong', {}, 'Too large: '),
        `${file.name} is ${bytes(file.size)}; your tier (${tier.name}) takes components up to ${bytes(tier.max_component_bytes)}.`));
      return;
    }
    let body;
    try {
      body = {
        route: route.value.trim(),
        host: host.value.trim() || null,
        config: pairs(config.value, 'Configuration'),
        secrets: pairs(secrets.value, 'Secrets'),
        allowed_outbound_hosts: outbound.value.split('\n').map((l) => l.trim()).filter(Boolean),
        max_instance_reuse: Number(reuse.value) || 1,
      };
    } catch (error) {
      result.append(h('div', { class: 'notice error', role: 'alert' }, error.message));
      return;
    }
    submit.disabled = true;
    progressBox.hidden = false;
    progress.value = 0;
    progress.max = 100;
    phase.textContent = 'Uploading…';
    try {
      const uploaded = await uploadComponent(file, name.value.trim() || 'component', (step, sent, total) => {
        if (step === 'upload') {
          progress.value = total ? Math.round((sent / total) * 100) : 0;
          phase.textContent = `Uploading… ${bytes(sent)} of ${bytes(total)}`;
        } else {
          progress.value = 100;
          phase.textContent = 'Uploaded. Validating and compiling…';
        }
      });
      progress.value = 100;
      phase.textContent = `Compiled in ${n(uploaded.compile_ms)} ms (${uploaded.world}). Deploying…`;
      body.component = uploaded.digest;
      const deployed = await api('POST', `${API}/deployments`, body);
      const url = invokeUrl(deployed);
      phase.textContent = 'Done.';
      result.append(h('div', { class: 'notice success', 'data-testid': 'deployed' },
        h('p', {}, h('strong', {}, `${deployed.route} is live at v${deployed.version}.`), ` Compiled in ${n(uploaded.compile_ms)} ms.`),
        h('p', {}, 'Invoke it at ', h('code', { 'data-testid': 'invoke-url' }, url), ' ', h('button', { type: 'button', class: 'small', onclick: () => copy(url, 'URL') }, 'Copy')),
        h('p', {}, h('a', { href: `#/deployments/${encodeURIComponent(deployed.id)}` }, 'See its versions'))));
    } catch (error) {
      progressBox.hidden = true;
      result.append(errorNotice(error));
    } finally {
      submit.disabled = false;
    }
  } },
  drop,
  progressBox,
  result,
  h('div', {}, h('label', { for: 'name' }, 'Component name'), name),
  h('div', {}, h('label', { for: 'route' }, 'Route ', h('span', { class: 'hint' }, `/path for one path, /path/... for everything under it; inside /${state.me.tenant}/ or a route granted to you`)), route),
  h('div', {}, h('label', { for: 'host' }, 'Host ', h('span', { class: 'hint' }, 'serve the route only for this Host header')), host),
  h('div', {}, h('label', { for: 'config' }, 'Configuration ', h('span', { class: 'hint' }, 'NAME=value, one per line; read by the component with wasi:config')), config),
  h('div', {}, h('label', { for: 'secrets' }, 'Secrets ', h('span', { class: 'hint' }, 'NAME=value, one per line; stored encrypted and never shown again')), secrets),
  h('div', {}, h('label', { for: 'outbound' }, 'Outbound hosts ', h('span', { class: 'hint' }, 'one per line; the only places the component may send requests to')), outbound),
  h('div', {}, h('label', { for: 'reuse' }, 'Requests per instance ', h('span', { class: 'hint' }, '1: a fresh instance for every request; more: an instance serves later requests too, up to your tier\u2019s cap')), reuse),
  h('div', {}, submit));
  main.append(form);
  return null;
}

// ---------------------------------------------------------------- usage

const ERROR_KINDS = ['trap', 'timeout', 'oom', 'other'];

/// A bar chart of `points` (oldest first); `series` gives, per point, the
/// stacked values `[{kind, value}]`; `quota` draws a line at that value.
function barChart({ points, series, quota, label, format, tick }) {
  const W = 640;
  const H = 180;
  const left = 44;
  const bottom = 22;
  const top = 14;
  const values = points.map((p) => series(p).reduce((sum, part) => sum + part.value, 0));
  const highest = Math.max(1, ...values);
  // The quota is drawn when it is within sight of the data; far above it,
  // it is named at the top instead of flattening every bar.
  const quotaShown = quota !== null && quota !== undefined && quota <= highest * 4;
  const max = niceCeiling(quotaShown ? Math.max(highest, quota) * 1.05 : highest * 1.05);
  const y = (v) => top + (H - top - bottom) * (1 - v / max);
  const slot = (W - left - 6) / points.length;
  const svgEl = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
  svgEl.append(s('title', {}, label));
  for (const v of [0, max / 2, max]) {
    svgEl.append(s('line', { class: 'axis', x1: left, x2: W, y1: y(v), y2: y(v) }));
    svgEl.append(s('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end' }, format(v)));
  }
  points.forEach((p, i) => {
    let base = 0;
    const x = left + i * slot + slot * 0.12;
    const parts = series(p);
    const total = parts.reduce((sum, part) => sum + part.value, 0);
    const tip = `${tick(p, true)}: ${parts.map((part) => `${part.kind === 'value' ? '' : `${part.kind} `}${format(part.value)}`).join(', ')}`;
    const group = s('g', { 'data-total': String(total) }, s('title', {}, tip));
    for (const part of parts) {
      if (part.value <= 0) continue;
      const y1 = y(base + part.value);
      group.append(s('rect', { class: `bar ${part.kind}`, x, y: y1, width: Math.max(1, slot * 0.76), height: Math.max(1, y(base) - y1) }));
      base += part.value;
    }
    svgEl.append(group);
    const every = Math.ceil(points.length / 6);
    const last = i === points.length - 1;
    if ((i % every === 0 && points.length - i > every / 2) || last) {
      svgEl.append(s('text', { x: last ? W - 2 : x + slot * 0.38, y: H - 6, 'text-anchor': last ? 'end' : 'middle' }, tick(p, false)));
    }
  });
  if (quotaShown) {
    svgEl.append(s('line', { class: 'quota', x1: left, x2: W, y1: y(quota), y2: y(quota), 'data-quota': String(quota) }));
    svgEl.append(s('text', { class: 'quota-label', x: W - 4, y: y(quota) - 4, 'text-anchor': 'end' }, `quota ${format(quota)}`));
  } else if (quota !== null && quota !== undefined) {
    svgEl.append(s('text', { class: 'quota-label', x: left + 4, y: top - 3, 'data-quota': String(quota) }, `quota ${format(quota)} per ${label.includes('day') ? 'day' : 'minute'}, above this scale`));
  }
  return svgEl;
}

/// The round number (1, 2 or 5 times a power of ten, and even) at or
/// above `value`, so the axis reads 0, half and top in whole numbers.
function niceCeiling(value) {
  if (value <= 2) return 2;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function minuteTick(p, long) {
  const d = new Date(p.start);
  return long ? d.toLocaleString(undefined, { timeStyle: 'short', dateStyle: 'short' }) : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

function dayTick(p, long) {
  const d = new Date(p.start);
  return d.toLocaleDateString(undefined, long ? { dateStyle: 'medium', timeZone: 'UTC' } : { month: 'short', day: 'numeric', timeZone: 'UTC' });
}

function windowStat(title, window) {
  const limit = window.limit;
  const remaining = limit === null ? null : Math.max(0, limit - window.used);
  const share = limit ? Math.min(100, Math.round((window.used / limit) * 100)) : 0;
  return h('div', { class: 'panel stat', 'data-testid': `window-${title.toLowerCase().replace(/\W+/g, '-')}` },
    h('div', { class: 'label' }, title),
    h('div', { class: 'value' }, limit === null ? 'unlimited' : `${n(remaining)} left`),
    h('div', { class: 'sub' }, limit === null ? `${n(window.used)} used` : `${n(window.used)} of ${n(limit)} used · resets in ${window.reset_in_s} s`),
    limit === null ? null : h('div', { class: `meter ${share >= 90 ? 'high' : ''}`, role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': String(limit), 'aria-valuenow': String(window.used), 'aria-label': `${title} used` }, h('span', { style: null, dataset: { share: String(share) } })));
}

function periodCharts(history, tick, label) {
  const sum = (f) => history.points.reduce((a, p) => a + f(p), 0);
  const invocations = sum((p) => p.invocations);
  const errors = sum((p) => ERROR_KINDS.reduce((a, k) => a + (p.errors[k] || 0), 0));
  return h('div', { class: 'panel' },
    h('p', { class: 'hint', 'data-testid': `${history.period}-summary` }, `${n(invocations)} invocations and ${n(errors)} errors ${label}.`),
    h('div', { class: 'charts' },
      h('div', {}, h('h3', {}, 'Invocations'), barChart({
        points: history.points, quota: history.quota, label: `Invocations per ${history.period}`,
        series: (p) => [{ kind: 'value', value: p.invocations }], format: n, tick })),
      h('div', {}, h('h3', {}, 'Errors by kind'), barChart({
        points: history.points, quota: null, label: `Errors per ${history.period}`,
        series: (p) => ERROR_KINDS.map((k) => ({ kind: k, value: p.errors[k] || 0 })), format: n, tick }),
      h('div', { class: 'legend' }, ERROR_KINDS.map((k) => h('span', {}, h('i', { class: k }), k === 'oom' ? 'out of memory' : k)))),
      h('div', {}, h('h3', {}, 'Guest time'), barChart({
        points: history.points, quota: null, label: `Guest time per ${history.period}, milliseconds`,
        series: (p) => [{ kind: 'wall', value: p.wall_ms }], format: (v) => `${n(v)} ms`, tick }))));
}

async function usagePage(main) {
  main.append(pageHead('Usage', 'Requests against your tier\u2019s quota, and what your components did with them, across every node.'));
  const body = h('div', {});
  main.append(body);
  const draw = async () => {
    const [usage, minutes, days] = await Promise.all([
      api('GET', `${API}/usage`),
      api('GET', `${API}/usage/history?period=minute&count=60`),
      api('GET', `${API}/usage/history?period=day&count=30`)]);
    clear(body);
    body.append(h('div', { class: 'grid' },
      windowStat('This minute', usage.minute),
      windowStat('Today', usage.day),
      h('div', { class: 'panel stat' }, h('div', { class: 'label' }, 'All time'), h('div', { class: 'value', 'data-testid': 'total-invocations' }, n(usage.totals.invocations)), h('div', { class: 'sub' }, `invocations on tier ${usage.tier}`)),
      usage.kv ? h('div', { class: 'panel stat' }, h('div', { class: 'label' }, 'Key-value data'), h('div', { class: 'value' }, bytes(usage.kv.bytes)), h('div', { class: 'sub' }, `${n(usage.kv.keys)} of ${n(usage.kv.max_keys)} keys; ${bytes(usage.kv.max_bytes)} allowed`)) : null));
    if (usage.degraded) body.append(h('div', { class: 'notice' }, 'Quota counts are per node for now: the shared counter does not answer.'));
    body.append(h('h2', {}, 'Last hour, per minute'), periodCharts(minutes, minuteTick, 'in the last hour'));
    body.append(h('h2', {}, 'Last 30 days, per day (UTC)'), periodCharts(days, dayTick, 'in the last 30 days'));
    // The meters' widths: set from script, as the style sheet's policy
    // forbids inline style attributes.
    body.querySelectorAll('.meter > span').forEach((bar) => { bar.style.width = `${bar.dataset.share}%`; });
  };
  await draw();
  const timer = setInterval(() => draw().catch(() => {}), 5000);
  return () => clearInterval(timer);
}

// ---------------------------------------------------------------- logs

const OUTCOMES = ['ok', 'trap', 'timeout', 'oom', 'stack_overflow', 'no_response', 'guest_error'];

function outcomeBadge(outcome) {
  const kind = outcome === 'ok' ? 'ok' : outcome === 'timeout' || outcome === 'no_response' ? 'warn' : 'bad';
  return h('span', { class: `badge ${kind}` }, outcome || 'unknown');
}

function logItem(event) {
  if (event.kind === 'dropped') {
    return h('li', { class: 'dropped' }, h('div', { class: 'log-head' }, h('span', { class: 'badge warn' }, 'dropped'),
      `${n(event.dropped_events)} events not logged on ${event.node}: ${event.message || ''}`));
  }
  return h('li', { dataset: { outcome: event.outcome || '', id: event.id } },
    h('div', { class: 'log-head' },
      h('time', { datetime: event.time }, new Date(event.time).toLocaleTimeString()),
      h('span', { class: 'mono' }, String(event.status)),
      outcomeBadge(event.outcome),
      h('span', { class: 'path' }, `${event.method} ${event.path}`),
      h('span', { class: 'meta' }, `${event.route} v${event.version} · ${event.duration_ms} ms · ${event.node}`)),
    event.stdout ? h('pre', { class: 'log-out', 'aria-label': 'standard output' }, event.stdout) : null,
    event.stderr ? h('pre', { class: 'log-out stderr', 'aria-label': 'standard error' }, event.stderr) : null,
    event.output_dropped_bytes ? h('div', { class: 'hint' }, `${bytes(event.output_dropped_bytes)} more output not kept`) : null);
}

/// Reads a Server-Sent Events body, calling `onEvent(id, type, data)`.
async function readEvents(response, onEvent, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      let type = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const at = line.indexOf(':');
        const field = at < 0 ? line : line.slice(0, at);
        const text = at < 0 ? '' : line.slice(at + 1).replace(/^ /, '');
        if (field === 'id') id = text;
        else if (field === 'event') type = text;
        else if (field === 'data') data.push(text);
      }
      if (data.length) onEvent(id, type, data.join('\n'));
    }
  }
}

async function logsPage(main) {
  main.append(pageHead('Logs', 'Each invocation of your deployments, as it happens, with what the component printed.'));
  const deployments = await api('GET', `${API}/deployments`);
  const deployment = h('select', { id: 'log-deployment' }, h('option', { value: '' }, 'All deployments'),
    deployments.map((d) => h('option', { value: d.id }, d.route)));
  const outcome = h('select', { id: 'log-outcome' }, h('option', { value: '' }, 'Any outcome'), OUTCOMES.map((o) => h('option', { value: o }, o.replace(/_/g, ' '))));
  const pause = h('button', { type: 'button', 'aria-pressed': 'false' }, 'Pause');
  const clearButton = h('button', { type: 'button' }, 'Clear');
  const streamState = h('span', { class: 'stream-state', 'aria-live': 'polite' }, 'Connecting…');
  const list = h('ul', { class: 'log-list', 'aria-label': 'Invocations, newest first' });
  const empty = h('div', { class: 'empty' }, h('strong', {}, 'Nothing yet'), 'Invocations appear here as they happen.');
  const box = h('div', { class: 'table-wrap' }, empty, list);
  main.append(h('div', { class: 'inline panel' },
    h('label', { for: 'log-deployment' }, 'Deployment', deployment),
    h('label', { for: 'log-outcome' }, 'Outcome', outcome),
    pause, clearButton, streamState));
  main.append(h('div', { class: 'spacer' }), box);

  let paused = false;
  let held = [];
  let controller = null;
  let lastId = null;
  let stopped = false;
  const show = (event) => {
    empty.hidden = true;
    list.prepend(logItem(event));
    while (list.children.length > 500) list.lastChild.remove();
  };
  const take = (event) => {
    if (event.id) lastId = event.id;
    if (paused) {
      held.push(event);
      streamState.textContent = `Paused · ${held.length} new`;
    } else {
      show(event);
    }
  };
  const query = () => {
    const params = new URLSearchParams();
    if (deployment.value) params.set('deployment', deployment.value);
    if (outcome.value) params.set('outcome', outcome.value);
    return params;
  };
  const connect = async () => {
    controller = new AbortController();
    const signal = controller.signal;
    let delay = 1000;
    while (!stopped && !signal.aborted) {
      try {
        if (lastId === null) {
          const params = query();
          params.set('limit', '50');
          const recent = await api('GET', `${API}/logs?${params}`);
          recent.events.forEach(take);
          if (lastId === null) lastId = '';
        }
        const params = query();
        params.set('follow', 'true');
        const headers = { Authorization: `Bearer ${key()}`, Accept: 'text/event-stream' };
        if (lastId) headers['Last-Event-ID'] = lastId;
        const response = await fetch(`${API}/logs?${params}`, { headers, signal, cache: 'no-store' });
        if (!response.ok) {
          const error = await errorOf(response.status, await response.text());
          if (response.status === 401) {
            signOut('Your key is no longer valid (revoked, or mistyped). Sign in again.');
            return;
          }
          throw error;
        }
        streamState.textContent = paused ? `Paused · ${held.length} new` : 'Live';
        delay = 1000;
        await readEvents(response, (id, type, data) => take(JSON.parse(data)), signal);
        if (signal.aborted || stopped) return;
        streamState.textContent = 'Reconnecting…';
      } catch (error) {
        if (signal.aborted || stopped) return;
        streamState.textContent = `Reconnecting… (${error.message})`;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  };
  const restart = () => {
    if (controller) controller.abort();
    clear(list);
    empty.hidden = false;
    held = [];
    lastId = null;
    streamState.textContent = 'Connecting…';
    connect();
  };
  deployment.addEventListener('change', restart);
  outcome.addEventListener('change', restart);
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (!paused) {
      held.forEach(show);
      held = [];
      streamState.textContent = 'Live';
    } else {
      streamState.textContent = 'Paused · 0 new';
    }
  });
  clearButton.addEventListener('click', () => {
    clear(list);
    held = [];
    empty.hidden = false;
  });
  connect();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}

// ---------------------------------------------------------------- keys

async function keysPage(main) {
  main.append(pageHead('API keys', 'Keys of your tenant. A key is shown once, when it is made; revoking one stops it on every node within a second.'));
  const fresh = h('div', { 'aria-live': 'polite' });
  const scopeBoxes = ['read', 'deploy', ...(hasScope('admin') ? ['admin'] : [])].map((scope) =>
    h('label', {}, h('input', { type: 'checkbox', name: 'scope', value: scope, checked: scope !== 'admin' }), scope));
  const create = h('form', { class: 'panel', onsubmit: async (e) => {
    e.preventDefault();
    clear(fresh);
    const scopes = scopeBoxes.map((l) => l.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
    try {
      const made = await api('POST', `${API}/keys`, { scopes });
      fresh.append(h('div', { class: 'secret-box', 'data-testid': 'new-key' },
        h('div', {}, h('strong', {}, 'Your new key'), h('div', { class: 'hint' }, 'Copy it now: it is not shown again.')),
        h('code', {}, made.key),
        h('button', { type: 'button', class: 'primary', onclick: () => copy(made.key, 'Key') }, 'Copy')));
      await drawList();
    } catch (error) {
      fresh.append(errorNotice(error));
    }
  } },
  h('fieldset', {}, h('legend', {}, 'New key'), h('div', { class: 'inline' }, scopeBoxes, h('button', { type: 'submit', class: 'primary' }, 'Create key'))));
  const listBox = h('div', {});
  main.append(create, fresh, h('h2', {}, 'Keys'), listBox);
  const drawList = async () => {
    const keys = await api('GET', `${API}/keys`);
    keys.sort((a, b) => (a.revoked - b.revoked) || b.created_at.localeCompare(a.created_at));
    clear(listBox);
    const rows = keys.map((k) => h('tr', { dataset: { key: k.id } },
      h('td', {}, h('code', {}, k.prefix), k.id === state.me.key_id ? h('span', { class: 'badge muted' }, ' this session') : null),
      h('td', {}, k.tenant),
      h('td', {}, k.scopes.join(', ')),
      h('td', {}, timeElement(k.created_at)),
      h('td', { title: k.last_used_at || '' }, ago(k.last_used_at)),
      h('td', {}, k.revoked ? h('span', { class: 'badge bad' }, 'revoked') : h('span', { class: 'badge ok' }, 'active')),
      h('td', {}, k.revoked ? null : h('button', { type: 'button', class: 'small danger', onclick: () => revoke(k) }, 'Revoke'))));
    listBox.append(h('div', { class: 'table-wrap' }, h('table', {},
      h('caption', { class: 'sr-only' }, 'API keys'),
      h('thead', {}, h('tr', {}, ['Prefix', 'Tenant', 'Scopes', 'Created', 'Last used', 'State', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows))));
  };
  const revoke = async (k) => {
    const own = k.id === state.me.key_id;
    const sure = await confirmDialog(`Revoke ${k.prefix}…?`,
      own ? 'This is the key you are signed in with: revoking it signs you out here.' : 'Anything using this key gets 401 from now on, on every node.',
      'Revoke key');
    if (!sure) return;
    try {
      await api('DELETE', `${API}/keys/${encodeURIComponent(k.id)}`);
      if (own) {
        signOut('The key you were signed in with is revoked. Sign in with another.');
        return;
      }
      toast(`Key ${k.prefix} revoked`);
      await drawList();
    } catch (error) {
      toast(`${headline(error)}: ${error.message}`, 'error');
    }
  };
  await drawList();
  return null;
}

// ---------------------------------------------------------------- schedules and queues

async function triggersPage(main) {
  main.append(pageHead('Schedules & queues',
    'Requests to your deployments on a schedule, and for each message of a queue. Each due time fires once across the cluster; each message is delivered at least once.'));
  const deployments = await api('GET', `${API}/deployments`);
  const routeOf = new Map(deployments.map((d) => [d.id, d.route]));
  const pick = (id) => h('select', { id, required: true },
    deployments.map((d) => h('option', { value: d.id }, d.route)));
  const field = (label, input, hint) => h('div', { class: 'field' }, h('label', { for: input.id }, label), input,
    hint ? h('div', { class: 'hint' }, hint) : null);
  const schedulesBox = h('div', {});
  const queuesBox = h('div', {});
  const problems = h('div', { 'aria-live': 'polite' });
  const canChange = hasScope('deploy') && deployments.length > 0;

  const drawSchedules = async () => {
    const schedules = await api('GET', `${API}/schedules`);
    clear(schedulesBox);
    if (schedules.length === 0) {
      schedulesBox.append(h('div', { class: 'panel empty' }, 'No schedules yet.'));
      return;
    }
    const rows = schedules.map((sch) => h('tr', { dataset: { schedule: sch.id } },
      h('td', {}, h('code', {}, sch.cron)),
      h('td', { class: 'wrap' }, h('code', {}, `${sch.method} ${sch.path}`)),
      h('td', { class: 'wrap' }, routeOf.get(sch.deployment) || sch.deployment),
      h('td', {}, sch.next_runs.length ? timeElement(sch.next_runs[0]) : '-'),
      h('td', {}, h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'small', onclick: () => showRuns(sch) }, 'Firings'),
        hasScope('deploy') ? h('button', { type: 'button', class: 'small danger', onclick: () => removeSchedule(sch) }, 'Delete') : null))));
    schedulesBox.append(h('div', { class: 'table-wrap' }, h('table', {},
      h('caption', { class: 'sr-only' }, 'Schedules'),
      h('thead', {}, h('tr', {}, ['When', 'Request', 'Deployment', 'Next', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows))));
  };
  const runsBox = h('div', { 'aria-live': 'polite' });
  const showRuns = async (sch) => {
    clear(runsBox);
    const runs = await api('GET', `${API}/schedules/${encodeURIComponent(sch.id)}/runs`);
    runsBox.append(h('h3', {}, `Firings of ${sch.cron}`), runs.length === 0 ? h('p', { class: 'hint' }, 'None yet.') :
      h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, ['Due', 'Fired', 'Status', 'Outcome', 'Node'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, runs.map((r) => h('tr', {},
          h('td', {}, timeElement(r.due_at)),
          h('td', {}, r.fired_at ? timeElement(r.fired_at) : 'firing'),
          h('td', {}, r.http_status ?? ''),
          h('td', {}, outcomeBadge(r.outcome || '')),
          h('td', {}, r.node)))))));
  };
  const removeSchedule = async (sch) => {
    if (!await confirmDialog(`Delete the schedule ${sch.cron}?`, 'It never fires again, on any node.', 'Delete schedule')) return;
    try {
      await api('DELETE', `${API}/schedules/${encodeURIComponent(sch.id)}`);
      toast('Schedule deleted');
      await drawSchedules();
    } catch (error) {
      toast(`${headline(error)}: ${error.message}`, 'error');
    }
  };

  const drawQueues = async () => {
    const queues = await api('GET', `${API}/queues`);
    clear(queuesBox);
    if (queues.length === 0) {
      queuesBox.append(h('div', { class: 'panel empty' }, 'No queues yet.'));
      return;
    }
    const rows = queues.map((q) => h('tr', { dataset: { queue: q.name } },
      h('td', {}, h('strong', {}, q.name)),
      h('td', { class: 'wrap' }, h('code', {}, `POST ${q.path}`)),
      h('td', {}, n(q.waiting ?? '?')),
      h('td', { title: q.oldest_published_at || '' }, q.oldest_published_at ? ago(q.oldest_published_at) : '-'),
      h('td', {}, q.dead ? h('span', { class: 'badge bad' }, n(q.dead)) : '0'),
      h('td', {}, `${q.max_attempts} × ${q.visibility_timeout_s} s`),
      h('td', {}, h('div', { class: 'actions' },
        hasScope('deploy') ? h('button', { type: 'button', class: 'small', onclick: () => publishTo(q) }, 'Publish') : null,
        hasScope('deploy') && q.dead ? h('button', { type: 'button', class: 'small', onclick: () => redrive(q) }, 'Redrive') : null,
        hasScope('deploy') ? h('button', { type: 'button', class: 'small danger', onclick: () => removeQueue(q) }, 'Delete') : null))));
    queuesBox.append(h('div', { class: 'table-wrap' }, h('table', {},
      h('caption', { class: 'sr-only' }, 'Queues'),
      h('thead', {}, h('tr', {}, ['Queue', 'Delivered to', 'Waiting', 'Oldest', 'Dead', 'Attempts × visibility', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows))));
  };
  const publishBox = h('div', {});
  const publishTo = (q) => {
    clear(publishBox);
    const message = h('textarea', { id: 'q-message', spellcheck: 'false', placeholder: 'The message (sent as text/plain)' });
    const sent = h('div', { 'aria-live': 'polite' });
    publishBox.append(h('form', { class: 'panel', onsubmit: async (e) => {
      e.preventDefault();
      clear(sent);
      try {
        const response = await fetch(`${API}/queues/${encodeURIComponent(q.name)}/messages`, {
          method: 'POST', headers: { authorization: `Bearer ${key()}`, 'content-type': 'text/plain' }, body: message.value });
        if (!response.ok) throw await errorOf(response.status, await response.text());
        const { id } = await response.json();
        sent.append(h('p', { 'data-testid': 'published' }, 'Published ', h('code', {}, id)));
        await drawQueues();
      } catch (error) {
        sent.append(errorNotice(error));
      }
    } }, h('fieldset', {}, h('legend', {}, `Publish to ${q.name}`), field('Message', message),
      h('button', { type: 'submit', class: 'primary' }, 'Publish message')), sent));
    message.focus();
  };
  const redrive = async (q) => {
    try {
      const moved = await api('POST', `${API}/queues/${encodeURIComponent(q.name)}/dead/redrive`);
      toast(`${moved.redriven} dead letters back in ${q.name}`);
      await drawQueues();
    } catch (error) {
      toast(`${headline(error)}: ${error.message}`, 'error');
    }
  };
  const removeQueue = async (q) => {
    if (!await confirmDialog(`Delete the queue ${q.name}?`, 'Every message it holds goes with it.', 'Delete queue')) return;
    try {
      await api('DELETE', `${API}/queues/${encodeURIComponent(q.name)}`);
      toast(`Queue ${q.name} deleted`);
      await drawQueues();
    } catch (error) {
      toast(`${headline(error)}: ${error.message}`, 'error');
    }
  };

  if (canChange) {
    const cron = h('input', { type: 'text', id: 'sch-cron', required: true, spellcheck: 'false', placeholder: '*/5 * * * *  or  @every 30s' });
    const path = h('input', { type: 'text', id: 'sch-path', required: true, spellcheck: 'false', placeholder: '/acme/jobs/cleanup' });
    const method = h('select', { id: 'sch-method' }, ['POST', 'GET', 'PUT', 'PATCH', 'DELETE'].map((m) => h('option', { value: m }, m)));
    const deployment = pick('sch-deployment');
    const scheduleForm = h('form', { class: 'panel', onsubmit: async (e) => {
      e.preventDefault();
      clear(problems);
      try {
        const made = await api('POST', `${API}/schedules`, { deployment: deployment.value, cron: cron.value, path: path.value, method: method.value });
        toast(`Schedule made; next due ${when(made.next_runs[0])}`);
        await drawSchedules();
      } catch (error) {
        problems.append(errorNotice(error));
      }
    } }, h('fieldset', {}, h('legend', {}, 'New schedule'),
      field('Deployment', deployment), field('When (UTC)', cron, 'Five cron fields, or @every with a duration'),
      field('Method', method), field('Path', path, 'Inside the deployment\'s route'),
      h('button', { type: 'submit', class: 'primary' }, 'Create schedule')));
    const name = h('input', { type: 'text', id: 'q-name', required: true, pattern: '[a-z0-9][a-z0-9_\\-]{0,62}', placeholder: 'orders' });
    const qpath = h('input', { type: 'text', id: 'q-path', required: true, spellcheck: 'false', placeholder: '/acme/orders/consume' });
    const attempts = h('input', { id: 'q-attempts', type: 'number', min: 1, max: 100, value: 5 });
    const qdeployment = pick('q-deployment');
    const queueForm = h('form', { class: 'panel', onsubmit: async (e) => {
      e.preventDefault();
      clear(problems);
      try {
        await api('POST', `${API}/queues`, { name: name.value, deployment: qdeployment.value, path: qpath.value, max_attempts: Number(attempts.value) });
        toast(`Queue ${name.value} created`);
        await drawQueues();
      } catch (error) {
        problems.append(errorNotice(error));
      }
    } }, h('fieldset', {}, h('legend', {}, 'New queue'),
      field('Name', name), field('Deployment', qdeployment), field('Path', qpath, 'Messages are POSTed here'),
      field('Attempts before the dead letters', attempts),
      h('button', { type: 'submit', class: 'primary' }, 'Create queue')));
    main.append(h('div', { class: 'columns' }, scheduleForm, queueForm), problems);
  }
  main.append(h('h2', {}, 'Schedules'), schedulesBox, runsBox, h('h2', {}, 'Queues'), queuesBox, publishBox);
  await Promise.all([drawSchedules(), drawQueues()]);
  return null;
}

// ---------------------------------------------------------------- operators

const TIER_FIELDS = [
  ['requests_per_minute', 'Requests per minute', 'empty: unlimited'],
  ['requests_per_day', 'Requests per day', 'empty: unlimited'],
  ['memory_limit_bytes', 'Memory per instance (bytes)', ''],
  ['execution_timeout_ms', 'Time per request (ms)', ''],
  ['max_input_bytes', 'Largest request body (bytes)', ''],
  ['max_component_bytes', 'Largest component (bytes)', ''],
  ['max_concurrency', 'Requests at once', 'empty: no cap'],
  ['max_instance_reuse', 'Most requests per instance', ''],
];
const NULLABLE = new Set(['requests_per_minute', 'requests_per_day', 'max_concurrency']);

async function adminPage(main) {
  main.append(pageHead('Operators', 'Tenants, tiers and this node\u2019s health.'));
  const readiness = h('div', {});
  const tenantsBox = h('div', {});
  const tiersBox = h('div', {});
  main.append(h('h2', {}, 'This node'), readiness, h('h2', {}, 'Tenants'), tenantsBox, h('h2', {}, 'Tiers'), tiersBox);

  const drawReadiness = async () => {
    let status;
    let body;
    try {
      const response = await fetch('/ready', { cache: 'no-store' });
      status = response.status;
      body = await response.json();
    } catch (_) {
      status = 0;
      body = { status: 'unreachable' };
    }
    const badge = (value) => h('span', { class: `badge ${value === 'ok' || value === 'ready' ? 'ok' : value === 'off' ? 'muted' : value === 'degraded' ? 'warn' : 'bad'}` }, value);
    clear(readiness);
    readiness.append(h('div', { class: 'panel', 'data-testid': 'readiness' }, h('dl', { class: 'facts' },
      h('dt', {}, 'Readiness'), h('dd', {}, badge(body.status), ` HTTP ${status}`),
      h('dt', {}, 'Store'), h('dd', {}, badge(body.store || 'unknown')),
      h('dt', {}, 'Quota counter (Redis)'), h('dd', {}, badge(body.quota || 'unknown')),
      body.pending_compilations ? [h('dt', {}, 'Compiling'), h('dd', {}, `${n(body.pending_compilations)} components`)] : null)));
  };

  const [tenants, tiers] = await Promise.all([api('GET', `${API}/tenants`), api('GET', `${API}/tiers`)]);
  const drawTenants = (list) => {
    clear(tenantsBox);
    const rows = list.map((t) => {
      const select = h('select', { 'aria-label': `Tier of ${t.name}` }, tiers.map((tier) => h('option', { value: tier.name, selected: tier.name === t.tier }, tier.name)));
      select.addEventListener('change', async () => {
        try {
          await api('PATCH', `${API}/tenants/${encodeURIComponent(t.name)}`, { tier: select.value });
          toast(`${t.name} is now on ${select.value}`);
        } catch (error) {
          toast(`${headline(error)}: ${error.message}`, 'error');
          select.value = t.tier;
        }
      });
      const today = t.today || { invocations: 0, errors: {}, wall_ms: 0 };
      const errors = ERROR_KINDS.reduce((a, k) => a + (today.errors[k] || 0), 0);
      return h('tr', { dataset: { tenant: t.name } },
        h('td', { class: 'wrap' }, t.name),
        h('td', {}, select),
        h('td', { class: 'num' }, n(today.invocations)),
        h('td', { class: 'num' }, n(errors)),
        h('td', { class: 'num' }, `${n(today.wall_ms)} ms`),
        h('td', {}, timeElement(t.created_at)));
    });
    tenantsBox.append(h('div', { class: 'table-wrap' }, h('table', {},
      h('caption', { class: 'sr-only' }, 'Tenants'),
      h('thead', {}, h('tr', {}, ['Tenant', 'Tier', 'Invocations today', 'Errors today', 'Guest time today', 'Created'].map((t, i) => h('th', { scope: 'col', class: i >= 2 && i <= 4 ? 'num' : null }, t)))),
      h('tbody', {}, rows))));
  };
  const drawTiers = () => {
    clear(tiersBox);
    tiersBox.append(h('div', { class: 'grid' }, tiers.map((tier) => tierForm(tier, async () => {
      const fresh = await api('GET', `${API}/tiers`);
      tiers.splice(0, tiers.length, ...fresh);
      drawTiers();
    }))));
  };
  drawTenants(tenants);
  drawTiers();
  await drawReadiness();
  const timer = setInterval(() => {
    drawReadiness();
    api('GET', `${API}/tenants`).then(drawTenants).catch(() => {});
  }, 10000);
  return () => clearInterval(timer);
}

function tierForm(tier, saved) {
  const inputs = TIER_FIELDS.map(([field, title, hint]) => {
    const id = `tier-${tier.name}-${field}`;
    const input = h('input', { type: 'number', id, min: '0', value: tier[field] === null || tier[field] === undefined ? '' : String(tier[field]), dataset: { field } });
    return h('div', {}, h('label', { for: id }, title, hint ? h('span', { class: 'hint' }, ` (${hint})`) : null), input);
  });
  const problem = h('div', { 'aria-live': 'polite' });
  return h('form', { class: 'panel stack', 'data-tier': tier.name, onsubmit: async (e) => {
    e.preventDefault();
    clear(problem);
    // PUT replaces the tier: every field the API keeps is sent, the ones
    // not on this form as they are.
    const body = {};
    for (const [k, v] of Object.entries(tier)) if (k !== 'name') body[k] = v;
    for (const input of e.target.querySelectorAll('input[data-field]')) {
      const field = input.dataset.field;
      body[field] = input.value === '' ? (NULLABLE.has(field) ? null : undefined) : Number(input.value);
      if (body[field] === undefined) delete body[field];
    }
    try {
      await api('PUT', `${API}/tiers/${encodeURIComponent(tier.name)}`, body);
      toast(`Tier ${tier.name} saved; every node applies it within a second`);
      await saved();
    } catch (error) {
      problem.append(errorNotice(error));
    }
  } },
  h('h3', {}, `Tier ${tier.name}`), inputs, problem, h('div', {}, h('button', { type: 'submit', class: 'primary' }, `Save ${tier.name}`)));
}

// ---------------------------------------------------------------- start

window.addEventListener('hashchange', render);
// A key revoked elsewhere signs this tab out at its next request; a tab
// left open checks every 30 seconds.
setInterval(() => {
  if (key() && state.me) api('GET', `${API}/me`).catch(() => {});
}, 30000);
render();
