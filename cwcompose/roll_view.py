"""An interactive piano roll (HTML + SVG) and the small browser player the app streams into.

Why HTML/SVG with a little JavaScript, not a matplotlib picture or a custom Gradio component:

* it is rebuilt after every bar while a piece is composed, so it must be cheap to make
  (16 bars: about 1 ms of Python and a few KB, where a matplotlib figure costs ~150 ms and
  a 60 KB image);
* every note is an element, so hover (note name, velocity, bar), zoom and a playhead need
  a few lines of JavaScript and no plotting library in the browser;
* a custom component needs a Node build step and its own release cycle; ``gr.HTML`` plus one
  script in ``launch(head=...)`` needs nothing.

The same script is the audio player for streaming. Gradio 6's ``gr.Audio(streaming=True)``
re-encodes chunks to AAC with ffmpeg and plays them through HLS, which buffers segments before
the first sound (and ffmpeg is not installed here). Instead the app writes each bar's audio
(rendered by one long-lived synth, so chunks join sample-exactly) to a WAV file and lists the
files on the roll (``data-chunks``); the script fetches each new chunk, decodes it and schedules
it on a Web Audio clock at its exact sample offset, so playback is gapless and starts as soon as
the first bar is ready. Chunk lists, not the audio, travel with each update, so an update the
browser skips (two arriving in one frame) loses nothing.

>>> html = roll_html(RollNotes.from_midi(midi, primer_end_tick=0, bars=16), title="take 1")
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import miditoolkit
import numpy as np

from cwcompose.pianoroll import note_name
from cwcompose.render import ticks_to_seconds

PRIMER_COLOUR = "#1f5fa8"  # blue
CONTINUATION_COLOUR = "#b7470f"  # orange-brown: 4.5:1 against white for the legend text


@dataclass(frozen=True)
class RollNotes:
    """The notes of a piece in bars (floating point), with which of them came from the primer."""

    start: np.ndarray  # bars from the piece's start
    end: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    primer: np.ndarray  # bool
    bars: int  # bars the roll spans
    bar_seconds: tuple[float, ...]  # where each bar starts, in seconds (bars + 1 values)
    piece_bars: int | None = None  # the piece's length in bars (notes may ring on past it), when known

    @classmethod
    def from_midi(cls, midi: miditoolkit.MidiFile, primer_end_tick: int = 0, bars: int | None = None,
                  beats_per_bar: int = 4) -> "RollNotes":
        notes = sorted((n for inst in midi.instruments if not inst.is_drum for n in inst.notes),
                       key=lambda n: (n.start, n.pitch))
        ticks_per_bar = midi.ticks_per_beat * beats_per_bar
        start = np.array([n.start for n in notes], dtype=np.int64)
        end = np.array([n.end for n in notes], dtype=np.int64)
        last = int(np.ceil(max(end.max() if len(end) else 0, 1) / ticks_per_bar))
        piece_bars = bars
        bars = max(bars or 0, last, 1)
        seconds = ticks_to_seconds(np.arange(bars + 1) * ticks_per_bar, midi)
        return cls(start / ticks_per_bar, end / ticks_per_bar, np.array([n.pitch for n in notes], dtype=np.int64),
                   np.array([n.velocity for n in notes], dtype=np.int64), start < primer_end_tick, bars,
                   tuple(round(float(s), 4) for s in seconds), piece_bars)


def roll_html(notes: RollNotes, *, title: str = "", chunks: list[str | Path] = (), stream_id: str = "",
              done: bool = True, compact: bool = False, px_per_bar: int = 96) -> str:
    """The roll as one HTML fragment. ``chunks`` are audio chunk files to stream in order under
    ``stream_id``; ``done`` says no more will come. Compact rolls (variations) are shorter."""
    height = 96 if compact else 220
    top = 16  # bar numbers
    low, high = (int(notes.pitch.min()) - 2, int(notes.pitch.max()) + 2) if len(notes.pitch) else (48, 72)
    row = (height - top) / (high - low + 1)
    width = notes.bars * px_per_bar
    parts = []
    for bar in range(notes.bars):
        x = bar * px_per_bar
        parts.append(f'<line class="cw-bar" data-x="{bar}" x1="{x}" x2="{x}" y1="{top}" y2="{height}"/>')
        parts.append(f'<text class="cw-barno" data-x="{bar}" x="{x + 3}" y="12">{bar + 1}</text>')
    for s, e, p, v, is_primer in zip(notes.start.tolist(), notes.end.tolist(), notes.pitch.tolist(),
                                     notes.velocity.tolist(), notes.primer.tolist()):
        y = top + (high - p) * row
        part = "primer" if is_primer else "continuation"
        label = f"{note_name(p)}, velocity {v}, bar {int(s) + 1} ({part})"
        parts.append(
            f'<rect class="cw-note cw-{part}" data-x="{s:.4f}" data-w="{max(e - s, 0.01):.4f}" '
            f'x="{s * px_per_bar:.1f}" width="{max((e - s) * px_per_bar, 1.0):.1f}" y="{y:.1f}" '
            f'height="{max(row * 0.9, 1.5):.1f}" fill-opacity="{0.35 + 0.65 * v / 127:.2f}" '
            f'data-label="{label}"><title>{label}</title></rect>')
    parts.append(f'<line class="cw-playhead" x1="0" x2="0" y1="0" y2="{height}"/>')
    n_primer = int(notes.primer.sum())
    legend = (f'<span class="cw-key cw-key-primer">primer ({n_primer} notes)</span>' if n_primer else "") + \
        f'<span class="cw-key cw-key-continuation">new ({len(notes.pitch) - n_primer} notes)</span>'

    attrs = {"data-bar-seconds": json.dumps(list(notes.bar_seconds)), "data-px-per-bar": px_per_bar,
             "data-bars": notes.bars, "data-notes": len(notes.pitch), "data-stream": stream_id,
             "data-chunks": json.dumps([str(c) for c in chunks]), "data-done": int(done)}
    attr_text = " ".join(f'{k}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items())
    play = ('<button type="button" class="cw-btn cw-play" data-cw="play" aria-label="Play from the start">'
            'Play</button>') if stream_id and not compact else ""
    tools = "" if compact else play + (
        '<button type="button" class="cw-btn" data-cw="zoom-out" aria-label="Zoom out in time">−</button>'
        '<button type="button" class="cw-btn" data-cw="zoom-in" aria-label="Zoom in in time">+</button>')
    bars = notes.piece_bars or notes.bars
    summary = f"{html.escape(title)} — {bars} bars, {len(notes.pitch)} notes" if title else \
        f"{bars} bars, {len(notes.pitch)} notes"
    return (f'<div class="cw-roll{" cw-compact" if compact else ""}" {attr_text}>'
            f'<div class="cw-roll-tools">{tools}<span class="cw-roll-title">{summary}</span>{legend}'
            f'<span class="cw-hover" aria-live="polite">{"" if compact else "hover a note"}</span></div>'
            f'<div class="cw-roll-scroll" tabindex="0" role="region" aria-label="Piano roll: {summary}">'
            f'<svg width="{width}" height="{height}" role="img" aria-label="Piano roll, {summary}">'
            f'{"".join(parts)}</svg></div></div>')


def empty_roll_html(message: str = "The piano roll appears here as bars are composed.") -> str:
    return f'<div class="cw-roll cw-empty"><p>{html.escape(message)}</p></div>'


HEAD_CSS = f"""
.cw-roll {{ font: 13px/1.3 system-ui, sans-serif; color: #1a202c; }}
.cw-roll.cw-empty p {{ color: #4a5568; padding: 2em 0; margin: 0; }}
.cw-roll-tools {{ display: flex; flex-wrap: wrap; gap: 6px 10px; align-items: center; margin-bottom: 4px; }}
.cw-btn {{ min-width: 32px; min-height: 32px; border: 1px solid #718096; border-radius: 6px; background: #fff;
           color: #1a202c; font-size: 16px; cursor: pointer; }}
.cw-btn:focus-visible, .cw-roll-scroll:focus-visible {{ outline: 3px solid #2b6cb0; outline-offset: 1px; }}
.cw-btn[aria-pressed="true"] {{ background: #2b6cb0; color: #fff; }}
.cw-key::before {{ content: ""; display: inline-block; width: 10px; height: 10px; margin-right: 4px; }}
.cw-key-primer::before {{ background: {PRIMER_COLOUR}; }}
.cw-key-continuation::before {{ background: {CONTINUATION_COLOUR}; }}
.cw-hover {{ font-variant-numeric: tabular-nums; color: #1a202c; }}
.cw-roll-scroll {{ overflow-x: auto; overflow-y: hidden; border: 1px solid #cbd5e0; border-radius: 4px;
                   background: #fff; }}
.cw-roll svg {{ display: block; }}
.cw-bar {{ stroke: #cbd5e0; stroke-width: 1; }}
.cw-barno {{ font-size: 10px; fill: #4a5568; }}
.cw-primer {{ fill: {PRIMER_COLOUR}; }}
.cw-continuation {{ fill: {CONTINUATION_COLOUR}; }}
.cw-note:hover {{ stroke: #000; stroke-width: 1; }}
.cw-playhead {{ stroke: #c53030; stroke-width: 2; }}
.cw-compact .cw-roll-tools {{ font-size: 12px; }}
.cw-variations {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 10px; }}
.cw-variation {{ border: 1px solid #cbd5e0; border-radius: 6px; padding: 6px; }}
.cw-variation h4 {{ margin: 0 0 4px; font-size: 14px; }}
.cw-variation audio, .cw-ab audio {{ width: 100%; }}
.cw-ab-controls {{ display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 4px 0 8px; }}
.cw-ab-time {{ font-variant-numeric: tabular-nums; }}
.cw-ab .cw-roll {{ margin-bottom: 8px; }}
.cw-ab .cw-ab-off .cw-roll-scroll {{ opacity: 0.55; }}
/* Gradio's audio player draws its times and speed in neutral-400 (2.5:1 on white): darker, for AA */
.gradio-container time, .gradio-container button.playback span {{ color: #4b5563 !important; }}
"""

HEAD_JS = r"""
(() => {
  const W = window;
  if (W.cw) return;
  const cw = W.cw = { zoom: 1, streams: {}, ctx: null };
  const fileUrl = (p) => new URL('gradio_api/file=' + p, document.baseURI).href;
  cw.audioContext = () => {
    if (!cw.ctx) cw.ctx = new (W.AudioContext || W.webkitAudioContext)();
    if (cw.ctx.state === 'suspended') cw.ctx.resume();
    return cw.ctx;
  };
  // A click on Generate (mouse, Enter or Space) unlocks Web Audio before the first chunk arrives.
  document.addEventListener('click', (e) => {
    if (e.target.closest('#generate, #rewind, #continue')) cw.audioContext();
    const b = e.target.closest('[data-cw]');
    if (!b) return;
    const act = b.dataset.cw;
    if (act === 'zoom-in' || act === 'zoom-out') {
      cw.zoom = Math.min(8, Math.max(0.25, cw.zoom * (act === 'zoom-in' ? 1.5 : 1 / 1.5)));
      document.querySelectorAll('.cw-roll:not(.cw-compact)').forEach(applyZoom);
    } else if (act === 'play') {
      const id = b.closest('.cw-roll').dataset.stream;
      if (cw.streamTime(id) !== null) cw.stopAll(); else cw.replay(id);
    }
    else if (act.startsWith('ab-')) { cw.abSwitch(b.closest('.cw-ab'), act.slice(3)); }
    else if (act === 'ab-play') {}
  });
  document.addEventListener('click', (e) => {
    const b = e.target.closest('[data-ab-play]');
    if (b) cw.abToggle(b.closest('.cw-ab'));
  });
  document.addEventListener('mouseover', (e) => {
    const n = e.target.closest && e.target.closest('.cw-note');
    if (!n) return;
    const roll = n.closest('.cw-roll'); const out = roll && roll.querySelector('.cw-hover');
    if (out) out.textContent = n.dataset.label;
  });
  function applyZoom(roll) {
    const px = parseFloat(roll.dataset.pxPerBar) * cw.zoom;
    const svg = roll.querySelector('svg'); if (!svg) return;
    svg.setAttribute('width', parseInt(roll.dataset.bars) * px);
    svg.querySelectorAll('[data-x]').forEach((el) => {
      const x = parseFloat(el.dataset.x) * px;
      if (el.tagName === 'line') { el.setAttribute('x1', x); el.setAttribute('x2', x); }
      else if (el.tagName === 'text') el.setAttribute('x', x + 3);
      else { el.setAttribute('x', x); el.setAttribute('width', Math.max(1, parseFloat(el.dataset.w) * px)); }
    });
    roll.dataset.zoom = cw.zoom;
  }
  function xAt(roll, t) {
    const secs = JSON.parse(roll.dataset.barSeconds || '[0]');
    const px = parseFloat(roll.dataset.pxPerBar) * (roll.classList.contains('cw-compact') ? 1 : cw.zoom);
    for (let i = 0; i < secs.length - 1; i++)
      if (t < secs[i + 1]) return (i + (t - secs[i]) / Math.max(1e-6, secs[i + 1] - secs[i])) * px;
    return (secs.length - 1) * px;
  }
  function drawPlayhead(roll, t) {
    const line = roll.querySelector('.cw-playhead'); if (!line) return;
    const x = xAt(roll, t);
    line.setAttribute('x1', x); line.setAttribute('x2', x);
    roll.dataset.playhead = t.toFixed(2);
    const sc = roll.querySelector('.cw-roll-scroll');
    if (sc && (x < sc.scrollLeft || x > sc.scrollLeft + sc.clientWidth - 20)) sc.scrollLeft = Math.max(0, x - 40);
  }
  // ---- streaming: fetch every listed chunk once, schedule it gaplessly on the Web Audio clock
  function syncStream(roll) {
    const id = roll.dataset.stream; if (!id) return;
    let s = cw.streams[id];
    if (!s) {
      Object.keys(cw.streams).forEach((k) => cw.streams[k].stop());
      s = cw.streams[id] = { id, next: 0, fetched: [], buffers: [], at: null, samples: 0, sources: [],
        started: false, scheduled: 0, stopped: false, late: 0,
        stop() { this.stopped = true; this.sources.forEach((x) => { try { x.stop(); } catch (e) {} }); } };
    }
    const chunks = JSON.parse(roll.dataset.chunks || '[]');
    while (s.fetched.length < chunks.length) {
      const i = s.fetched.length;
      s.fetched.push(fetch(fileUrl(chunks[i])).then((r) => r.arrayBuffer()));
    }
    pump(s);
  }
  function schedule(s, buf) {
    const ctx = cw.audioContext();
    if (s.at === null) s.at = ctx.currentTime + 0.05;
    const late = ctx.currentTime + 0.02 - (s.at + s.samples / buf.sampleRate);
    if (late > 0) { s.at += late; s.late += 1; }  // composing fell behind playback: pause, never overlap
    const src = ctx.createBufferSource(); src.buffer = buf; src.connect(ctx.destination);
    src.start(s.at + s.samples / buf.sampleRate);
    s.samples += buf.length; s.sources.push(src); s.scheduled = s.samples / buf.sampleRate;
  }
  async function pump(s) {
    if (s.pumping) return; s.pumping = true;
    try {
      while (s.next < s.fetched.length) {
        const ctx = cw.audioContext();
        let buf = null;
        try { buf = await ctx.decodeAudioData((await s.fetched[s.next]).slice(0)); }
        catch (e) { console.warn('cwcompose: skipped an audio chunk', e); s.next += 1; continue; }
        s.buffers.push(buf); s.next += 1;
        if (!s.stopped) schedule(s, buf);
        if (!s.started) { s.started = true; s.firstSoundAt = performance.now(); }
      }
    } finally { s.pumping = false; }
  }
  // Play (again) from the start: every chunk decoded so far, and the ones still to come.
  cw.replay = (id) => {
    const s = cw.streams[id]; if (!s) return;
    Object.values(cw.streams).forEach((o) => o.stop());
    s.stopped = false; s.at = null; s.samples = 0; s.scheduled = 0; s.sources = []; s.late = 0;
    s.buffers.forEach((buf) => schedule(s, buf));
  };
  cw.stopAll = () => Object.values(cw.streams).forEach((s) => s.stop());
  cw.streamTime = (id) => {
    const s = cw.streams[id];
    if (!s || s.at === null || s.stopped || !cw.ctx) return null;
    const t = cw.ctx.currentTime - s.at;
    return t >= 0 && t <= s.scheduled ? t : null;
  };
  // ---- A/B/C: one transport, three <audio> elements; switching keeps the position
  cw.abToggle = (box) => {
    const cur = box.querySelector('audio.cw-ab-on');
    if (!cur) return;
    if (cur.paused) cur.play(); else cur.pause();
  };
  cw.abSwitch = (box, key) => {
    const cur = box.querySelector('audio.cw-ab-on');
    const next = box.querySelector(`audio[data-ab="${key}"]`);
    if (!next || next === cur) return;
    const t = cur ? cur.currentTime : 0, playing = cur && !cur.paused;
    if (cur) { cur.pause(); cur.classList.remove('cw-ab-on'); }
    next.currentTime = Math.min(t, (next.duration || t + 1) - 0.01);
    next.classList.add('cw-ab-on');
    box.querySelectorAll('[data-cw^="ab-"]').forEach((b) => b.setAttribute('aria-pressed', b.dataset.cw === 'ab-' + key));
    box.querySelectorAll('.cw-ab-item').forEach((it) => it.classList.toggle('cw-ab-off', it.dataset.ab !== key));
    box.dataset.current = key;
    if (playing) next.play();
  };
  // ---- one animation loop: playheads follow whichever audio is playing
  function tick() {
    document.querySelectorAll('.cw-roll[data-bars]').forEach((roll) => {
      const streamed = roll.dataset.stream && roll.closest('#roll');
      let t = streamed ? cw.streamTime(roll.dataset.stream) : null;
      if (!streamed) {
        const host = roll.closest('.cw-ab-item, .cw-variation, #result-panel, #compose-result');
        let audio = null;
        if (roll.closest('.cw-ab-item')) {
          const box = roll.closest('.cw-ab'); audio = box && box.querySelector('audio.cw-ab-on');
        } else if (host) audio = host.querySelector('audio');
        if (audio && !audio.paused) t = audio.currentTime;
      }
      if (t !== null) drawPlayhead(roll, t);
      const play = roll.querySelector('.cw-play');
      if (play) {
        const label = roll.dataset.stream && cw.streamTime(roll.dataset.stream) !== null ? 'Stop' : 'Play';
        if (play.textContent !== label) {
          play.textContent = label;
          play.setAttribute('aria-label', label === 'Play' ? 'Play from the start' : 'Stop playing');
        }
      }
    });
    document.querySelectorAll('.cw-ab').forEach((box) => {
      const a = box.querySelector('audio.cw-ab-on'), out = box.querySelector('.cw-ab-time');
      if (a && out) out.textContent = a.currentTime.toFixed(1) + ' s';
      const p = box.querySelector('[data-ab-play]'); if (a && p) p.textContent = a.paused ? 'Play' : 'Pause';
    });
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
  // Two bits of Gradio's own markup that axe-core flags: the empty audio/file placeholder's
  // aria-label on a role-less div (aria-prohibited-attr), and the upload button's aria-label
  // that leaves out its visible text (label-content-name-mismatch).
  // The audio player's speed button, whose name leaves out the speed it shows, and its waveform's
  // scrolling box (in a shadow root), which cannot be reached from the keyboard.
  function fixAria() {
    document.querySelectorAll('div[aria-label="Empty value"]:not([role])').forEach((e) => e.setAttribute('role', 'img'));
    document.querySelectorAll('button.upload-container[aria-label]').forEach((e) => e.removeAttribute('aria-label'));
    document.querySelectorAll('button.playback').forEach((b) => {
      const want = `Playback speed ${b.textContent.trim()}: change`;
      if (b.getAttribute('aria-label') !== want) b.setAttribute('aria-label', want);
    });
    document.querySelectorAll('#waveform > div').forEach((host) => {
      const box = host.shadowRoot && host.shadowRoot.querySelector('.scroll');
      if (box && !box.hasAttribute('tabindex')) {
        box.setAttribute('tabindex', '0'); box.setAttribute('role', 'region'); box.setAttribute('aria-label', 'Waveform');
      }
    });
  }
  const seen = new WeakMap();
  new MutationObserver(() => {
    fixAria();
    document.querySelectorAll('.cw-roll[data-bars]').forEach((roll) => {
      const key = roll.dataset.stream + '|' + roll.dataset.chunks + '|' + roll.dataset.notes;
      if (seen.get(roll) === key) return;
      seen.set(roll, key);
      if (!roll.classList.contains('cw-compact') && cw.zoom !== 1) applyZoom(roll);
      if (roll.dataset.stream && roll.closest('#roll')) syncStream(roll);
    });
  }).observe(document.documentElement, { childList: true, subtree: true, characterData: true, attributes: true,
                                         attributeFilter: ['data-chunks', 'aria-label'] });
})();
"""

HEAD = f"<style>{HEAD_CSS}</style><script>{HEAD_JS}</script>"


def file_url(path: str | Path) -> str:
    """The URL (relative to the page) where Gradio serves a file from an allowed folder."""
    return f"gradio_api/file={path}"


def variations_html(items: list[tuple[str, str, str]]) -> str:
    """Variations side by side: (heading, roll HTML, audio file) each, with a player each."""
    if not items:
        return ""
    cells = [f'<div class="cw-variation" role="group" aria-label="{html.escape(head)}"><h4>{html.escape(head)}</h4>'
             f'{roll}<audio controls preload="auto" src="{html.escape(file_url(audio))}" '
             f'aria-label="Play {html.escape(head)}"></audio></div>' for head, roll, audio in items]
    return f'<div class="cw-variations">{"".join(cells)}</div>'


def ab_html(items: list[tuple[str, str, str, str]]) -> str:
    """One transport over several results: (key, heading, roll HTML, audio file) each. The first
    is selected; A/B/C buttons switch which one plays, at the same position."""
    if not items:
        return ""
    first = items[0][0]
    buttons = "".join(
        f'<button type="button" class="cw-btn" data-cw="ab-{k}" aria-pressed="{str(k == first).lower()}">'
        f'{html.escape(k)}: {html.escape(h)}</button>' for k, h, _, _ in items)
    audios = "".join(
        f'<audio preload="auto" data-ab="{k}" class="{"cw-ab-on" if k == first else ""}" '
        f'src="{html.escape(file_url(a))}" aria-label="{html.escape(h)} audio"></audio>' for k, h, _, a in items)
    rolls = "".join(f'<div class="cw-ab-item{"" if k == first else " cw-ab-off"}" data-ab="{k}">'
                    f'<h4>{html.escape(k)}: {html.escape(h)}</h4>{roll}</div>' for k, h, roll, _ in items)
    return (f'<div class="cw-ab" data-current="{first}"><div class="cw-ab-controls" role="group" '
            f'aria-label="Compare transport"><button type="button" class="cw-btn" data-ab-play="1">Play</button>'
            f'{buttons}<span class="cw-ab-time" aria-live="off">0.0 s</span></div>{audios}{rolls}</div>')
