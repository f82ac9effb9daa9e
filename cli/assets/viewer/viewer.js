// The browser viewer: the device's desktop through noVNC, with the session around it; or a
// desktop recording, with playback controls.
//
// The page learns what it shows from /state (polled) and talks RFB over /ws, both on the local
// server of `kubectl tether desktop`, which bridges the WebSocket to a desktop channel through
// the relay, or of `kubectl tether play`, which plays a recording into it and takes the
// playback controls on /control. Everything that comes from the device, the session or the
// recording is put on the page with textContent, never as markup.

import RFB from '/assets/novnc/core/rfb.js';

const $ = (id) => document.getElementById(id);

/** The latest /state, and the server's clock minus ours (ms). */
let session = null;
let clockOffset = 0;
/** The noVNC connection, while there is one. */
let rfb = null;
/** Whether the screen is scaled to the window (else shown at its actual size). */
let fit = true;
/** Set once the page knows the session ended: nothing reconnects after that. */
let over = false;

function setState(state, status) {
  document.body.dataset.state = state;
  $('status').textContent = status;
}

function showOverlay(title, text, canReconnect) {
  $('overlay-title').textContent = title;
  $('overlay-text').textContent = text;
  $('reconnect').hidden = !canReconnect;
  $('overlay').hidden = false;
}

async function fetchState() {
  const response = await fetch('/state', { cache: 'no-store', credentials: 'same-origin' });
  if (!response.ok) {
    throw new Error(`the viewer's server answered ${response.status}`);
  }
  const state = await response.json();
  clockOffset = state.nowMs - Date.now();
  return state;
}

/** The command serving the page, for messages. */
function command() {
  return session && session.recording ? 'kubectl tether play' : 'kubectl tether desktop';
}

function minutesSeconds(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function renderCountdown() {
  if (!session || session.recording) return;
  const el = $('countdown');
  if (session.ended !== null) {
    el.textContent = 'Session over';
    el.classList.remove('urgent');
    return;
  }
  const left = (session.endsAt * 1000 - (Date.now() + clockOffset)) / 1000;
  el.textContent = `Session ends in ${minutesSeconds(left)}`;
  el.classList.toggle('urgent', left < 120);
  const notice = $('notice');
  if (session.relayCountdown) {
    notice.textContent = `The relay says this session ends in ${minutesSeconds(left)}; the desktop closes then.`;
    notice.hidden = false;
  }
}

/** Whether the position slider is being dragged (the server's position waits till it ends). */
let seeking = false;

function renderRecording(state) {
  const r = state.recording;
  $('device').textContent = r.device;
  const by = r.technician ? `, as ${r.technician} saw it` : '';
  $('session').textContent = `Recording ${r.object} of RemoteSession ${r.namespace}/${r.name}${by}, from ${r.startedAt}`;
  document.title = `${r.device} · Tether recording`;
  for (const id of ['countdown', 'ctrl-alt-del', 'clipboard-toggle', 'clipboard', 'view-only', 'others']) {
    $(id).hidden = true;
  }
  $('recording-banner').hidden = false;
  $('playback').hidden = false;
  document.body.dataset.playing = String(r.playing);
  $('play-pause').textContent = r.playing ? 'Pause' : 'Play';
  const slider = $('seek');
  // Whole steps of the slider (100 ms), the last one reaching the end (the clock stops there).
  slider.max = String(Math.ceil(r.durationMs / 100) * 100);
  if (!seeking) slider.value = String(r.positionMs);
  $('position').textContent = `${minutesSeconds(r.positionMs / 1000)} / ${minutesSeconds(r.durationMs / 1000)}`;
  if (document.activeElement !== $('speed')) $('speed').value = String(r.speed);
  const notice = $('notice');
  notice.hidden = !r.warning;
  notice.textContent = r.warning ? `The recording is damaged: ${r.warning}. Playback shows the last screen decoded from there on.` : '';
  $('viewers').textContent = state.viewers === 1 ? '1 browser viewer (you)' : `${state.viewers} browser viewers`;
}

/** Posts a playback control, then shows the state it led to. */
async function control(body) {
  const response = await fetch('/control', {
    method: 'POST',
    cache: 'no-store',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    $('notice').textContent = `The control was refused: ${await response.text()}`;
    $('notice').hidden = false;
  }
  render(await fetchState());
}

function render(state) {
  session = state;
  if (state.recording) {
    renderRecording(state);
    return;
  }
  $('device').textContent = state.device;
  $('session').textContent = `RemoteSession ${state.namespace}/${state.name}`;
  document.title = `${state.device} · Tether desktop`;
  $('view-only').hidden = !state.viewOnly;
  $('ctrl-alt-del').disabled = state.viewOnly;
  const clipboard = state.clipboard.toDevice || state.clipboard.fromDevice;
  $('clipboard-toggle').hidden = !clipboard;
  if (!clipboard) $('clipboard').hidden = true;
  $('clipboard-send').hidden = !state.clipboard.toDevice || state.viewOnly;
  $('clipboard-text').readOnly = !state.clipboard.toDevice;
  $('clipboard-note').textContent = [
    state.clipboard.toDevice ? 'you may paste to the device' : 'pasting to the device is not allowed',
    state.clipboard.fromDevice ? 'text copied on the device appears here' : 'the device\u2019s clipboard is not shared',
  ].join('; ');
  const n = state.viewers;
  $('viewers').textContent = n === 1
    ? '1 browser viewer through this kubectl tether (you)'
    : `${n} browser viewers through this kubectl tether`;
  renderParticipants(state.participants || []);
  renderCountdown();
  if (state.ended !== null && !over) {
    sessionEnded(state.ended);
  }
}

/** Who else is in the session, as the relay last said; names are shown as text only. */
function renderParticipants(participants) {
  const rights = { control: 'controls the desktop', viewOnly: 'view only', none: 'no desktop' };
  const others = participants.filter((p) => !p.you);
  $('others').textContent = others.length === 0
    ? 'No other technician is in this session.'
    : `Also in this session: ${others.map((p) => `${p.name} (${rights[p.desktop] || p.desktop})`).join(', ')}`;
}

function sessionEnded(reason) {
  over = true;
  setState('ended', 'Session ended');
  showOverlay('The session ended', `The relay closed the session: ${reason}. The desktop is no longer shared.`, false);
  if (rfb) {
    rfb.disconnect();
  }
}

async function disconnected(clean) {
  rfb = null;
  if (over) return;
  let state = null;
  try {
    state = await fetchState();
    render(state);
  } catch (e) {
    setState('stopped', 'Stopped');
    showOverlay(`${command()} stopped`, `The viewer\u2019s local server is gone; run ${command()} again to reconnect.`, false);
    return;
  }
  if (over) return;
  const why = state.closed || (clean ? 'the connection closed' : 'the connection was lost');
  setState('disconnected', 'Disconnected');
  showOverlay('Disconnected from the desktop', why, true);
}

function connect() {
  $('overlay').hidden = true;
  setState('connecting', 'Connecting…');
  const url = `ws://${window.location.host}/ws`;
  rfb = new RFB($('screen'), url, { shared: true });
  // Input is turned off in noVNC itself when the session is view-only: nothing is sent (the
  // relay would drop it anyway).
  rfb.viewOnly = session.viewOnly;
  rfb.focusOnClick = !session.viewOnly;
  rfb.scaleViewport = fit;
  rfb.resizeSession = false;
  rfb.background = '#101114';
  rfb.addEventListener('connect', () => {
    if (session.recording) {
      setState('connected', 'Playing back a recording');
      return;
    }
    setState('connected', session.viewOnly ? 'Connected, view only' : 'Connected');
    if (!session.viewOnly) rfb.focus();
  });
  rfb.addEventListener('disconnect', (e) => { disconnected(e.detail.clean); });
  rfb.addEventListener('securityfailure', (e) => {
    setState('disconnected', 'Refused');
    showOverlay('The desktop was refused', String(e.detail.reason || e.detail.status), true);
  });
  rfb.addEventListener('desktopname', (e) => {
    $('desktop-name').textContent = `· ${e.detail.name}`;
  });
  rfb.addEventListener('clipboard', (e) => {
    if (session.clipboard.fromDevice) {
      $('clipboard-text').value = e.detail.text;
    }
  });
}

function wire() {
  $('ctrl-alt-del').addEventListener('click', () => {
    if (rfb && !session.viewOnly) {
      rfb.sendCtrlAltDel();
      rfb.focus();
    }
  });
  $('scale').addEventListener('click', () => {
    fit = !fit;
    $('scale').setAttribute('aria-pressed', String(fit));
    $('scale').textContent = fit ? 'Fit to window' : 'Actual size';
    if (rfb) rfb.scaleViewport = fit;
  });
  $('clipboard-toggle').addEventListener('click', () => {
    const panel = $('clipboard');
    panel.hidden = !panel.hidden;
    $('clipboard-toggle').setAttribute('aria-expanded', String(!panel.hidden));
  });
  $('clipboard-send').addEventListener('click', () => {
    if (rfb && session.clipboard.toDevice && !session.viewOnly) {
      rfb.clipboardPasteFrom($('clipboard-text').value);
      $('clipboard-note').textContent = 'sent to the device\u2019s clipboard';
    }
  });
  $('play-pause').addEventListener('click', () => {
    if (session && session.recording) control({ action: session.recording.playing ? 'pause' : 'play' });
  });
  $('seek').addEventListener('input', () => { seeking = true; });
  $('seek').addEventListener('change', () => {
    seeking = false;
    control({ action: 'seek', ms: Number($('seek').value) });
  });
  $('speed').addEventListener('change', () => {
    control({ action: 'speed', speed: Number($('speed').value) });
  });
  $('reconnect').addEventListener('click', () => {
    if (!over && !rfb) connect();
  });
}

async function poll() {
  try {
    render(await fetchState());
  } catch (e) {
    if (!over && !rfb) return;
    // The server went away while connected: noVNC reports the disconnect itself.
  }
}

async function main() {
  wire();
  try {
    render(await fetchState());
  } catch (e) {
    setState('stopped', 'Not authorised');
    showOverlay('This viewer cannot start', String(e.message), false);
    return;
  }
  if (!over) connect();
  window.setInterval(renderCountdown, 1000);
  // A recording's position moves on its own: shown four times a second.
  window.setInterval(poll, session && session.recording ? 250 : 1000);
}

main();
