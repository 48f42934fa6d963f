"""The review page at real sizes, in a real browser: 4 tracks x 90 s at 44.1 kHz, every stage.

`make sample SECONDS=90 N=4` on a 44.1 kHz recipe writes 16 WAVs of 90 s (127 MB of 16-bit audio);
the review page used to embed them as WAV. This benchmark builds such a run and measures the page
`jukebox-lite review` makes of it (its size and render time, per codec), then opens it in headless
Chromium (Debian's `chromium` package, driven over the DevTools protocol): a screenshot for docs/,
and every <audio> element's source fetched and decoded whole by the browser's own Web Audio decoder,
with the decoded seconds reported.

The run: a copy of the real-music benchmark's run (bench/real_music.py: a corpus of recorded music,
trained models, their curves and evaluations), to which four sample folders are added. Their audio
is not generated: the run's models are 22.05 kHz and have no upsamplers, so each sample's four stage
slots hold the loudest 90 s of one recording of the corpus's package, resampled to 44.1 kHz, and its
meta.json says so. The page's size and playback depend on the length, rate and codec of the audio,
not on which model made it.

    python bench/review_page.py [--run ~/.cache/jukebox-lite/real_music/run] [--doc docs/review_page.md]
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from jukebox_lite.core.audio import load_audio, resample, to_mono
from jukebox_lite.core.config import ReviewConfig
from jukebox_lite.stages.review import clip

# bench/ is on sys.path when a script here runs
from common import add_out_argument, machine_line, write_results
from real_music import fetch

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "jukebox-lite"
STAGES = ("level2", "level1", "level0", "refined")
SR, SECONDS, TRACKS = 44100, 90.0, 4

# Run in the page by the browser: fetch every player's source and decode it whole with an
# OfflineAudioContext (Chromium's own decoders, no sound device needed).
DECODE_EVERY_PLAYER = """(async () => {
  const context = new OfflineAudioContext(1, 1, 48000);
  const found = [];
  for (const player of document.querySelectorAll('audio')) {
    try {
      const audio = await context.decodeAudioData(await (await fetch(player.src)).arrayBuffer());
      found.push({seconds: audio.duration, rate: audio.sampleRate});
    } catch (e) { found.push({error: String(e)}); }
  }
  return found;
})()"""


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
    messages ending in a NUL byte, commands on the browser's fd 3, replies on its fd 4)."""

    def __init__(self) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            raise SystemExit("no chromium here: install Debian's package (apt-get install chromium) and rerun")
        commands_read, self.commands = os.pipe()
        self.replies, replies_write = os.pipe()

        def wire_fds() -> None:  # in the child: our pipe ends become fds 3 and 4, via fds above both
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(replies_write)
        self.pending, self.last_id = b"", 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:  # events arrive between replies: skip them
            while b"\0" not in self.pending:
                chunk = os.read(self.replies, 1 << 20)
                if not chunk:
                    raise SystemExit(f"Chromium closed the pipe during {method}")
                self.pending += chunk
            line, self.pending = self.pending.split(b"\0", 1)
            reply = json.loads(line)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise SystemExit(f"Chromium: {method}: {reply['error']}")
                return reply["result"]

    def decode_players(self, page: Path, screenshot: Path | None) -> list[dict]:
        """Open the page, decode every player's source in it, and optionally screenshot its samples."""
        url = page.as_uri() + "#Samples"
        target = self.call("Target.createTarget", url=url)["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for _ in range(1200):  # the target starts on about:blank: wait until the page itself has loaded
            state = self.call("Runtime.evaluate", session, expression="location.href + ' ' + document.readyState",
                              returnByValue=True)["result"]["value"]
            if state == f"{url} complete":
                break
            time.sleep(0.25)
        else:
            raise SystemExit(f"Chromium did not load {page} in 5 minutes")
        if screenshot is not None:
            self.call("Emulation.setDeviceMetricsOverride", session, width=1400, height=1900, deviceScaleFactor=1, mobile=False)
            self.call("Runtime.evaluate", session, expression="document.getElementById('Samples').scrollIntoView()")
            image = self.call("Page.captureScreenshot", session, format="png")["data"]
            screenshot.write_bytes(base64.b64decode(image))
        found = self.call("Runtime.evaluate", session, expression=DECODE_EVERY_PLAYER, awaitPromise=True, returnByValue=True)
        self.call("Target.closeTarget", targetId=target)
        return found["result"]["value"]

    def close(self) -> None:
        self.call("Browser.close")
        self.process.wait(60)


def build_run(base: Path, work: Path, music: Path) -> Path:
    """A copy of `base` (its samples left out) with four 90 s stand-in samples at 44.1 kHz."""
    run = work / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(base, run, ignore=shutil.ignore_patterns("samples", "review.html"))
    recordings = sorted(music.glob("*.ogg"))[:TRACKS]
    for k, recording in enumerate(recordings):
        audio, sr = load_audio(recording)
        track = clip(resample(to_mono(audio), sr, SR)[0], SR, SECONDS)  # the loudest 90 s
        folder = run / "samples" / f"standin_{k}"
        folder.mkdir(parents=True)
        for stage in STAGES:
            sf.write(folder / f"{stage}.wav", track, SR, subtype="PCM_16")
        meta = {"seconds": SECONDS, "genre": "singularity", "seed": k,
                "prime": f"stand-in, not generated: {recording.name} in every stage's slot"}
        (folder / "meta.json").write_text(json.dumps(meta))
    return run


def render(run: Path, out: Path, *extra: str) -> tuple[Path, float]:
    """`jukebox-lite review` as a user runs it; the page and its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jukebox_lite", "review", "--run", str(run), "--out", str(out), *extra], check=True)
    return out / "review.html", time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=CACHE / "real_music" / "run",
                        help="the run whose copy the page shows (default: bench/real_music.py's)")
    parser.add_argument("--work", type=Path, default=CACHE / "review_page", help="where the copy and the pages go")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "review_page.md")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "review_page.png")
    add_out_argument(parser)
    args = parser.parse_args()
    if not (args.run / "data" / "manifest.jsonl").is_file():
        raise SystemExit(f"no run at {args.run}: run bench/real_music.py first (or pass --run RUN)")
    music = fetch(CACHE / "real_music" / "package")
    run = build_run(args.run, args.work, music)
    wav_mb = sum(p.stat().st_size for p in (run / "samples").rglob("*.wav")) / 1e6

    rows, browser = [], Chromium()
    cases = [("opus", [], args.screenshot), ("mp3", ["review.audio_codec=mp3"], None), ("wav (--link-audio)", ["--link-audio"], None)]
    for name, extra, screenshot in cases:
        page, seconds = render(run, args.work / name.split()[0], *extra)
        decoded = browser.decode_players(page, screenshot)
        print(f"{name}: {page.stat().st_size / 1e6:.1f} MB, {seconds:.0f} s; decoded: {decoded}", flush=True)
        rows.append({
            "device": "none", "codec": name, "bitrate_kbps": 0 if extra == ["--link-audio"] else ReviewConfig.bitrate_kbps,
            "page_mb": page.stat().st_size / 1e6, "render_s": seconds, "players": len(decoded),
            "players_decoded": sum("seconds" in d for d in decoded),
            "players_90s_decoded": sum(abs(d.get("seconds", 0) - SECONDS) < 0.1 for d in decoded),
            "errors": sum("error" in d for d in decoded),
        })
    browser.close()
    write_results("review_page", args, rows, args.out)
    write_doc(args.doc, args.screenshot, rows, wav_mb)


def write_doc(doc: Path, screenshot: Path, rows: list[dict], wav_mb: float) -> None:
    version = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
    table = "\n".join(
        f"| {r['codec']} | {r['bitrate_kbps'] or '—'} | **{r['page_mb']:.1f} MB** | {r['render_s']:.0f} s | "
        f"{r['players_decoded']} / {r['players']} ({r['players_90s_decoded']} of 90 s) | {r['errors']} |"
        for r in rows
    )
    doc.write_text(f"""# The review page at real sizes

Measured by `python bench/review_page.py` on {machine_line()}, {version} (headless), {time.strftime('%Y-%m-%d')}.

The page of a run with **{TRACKS} samples x {SECONDS:.0f} s x {len(STAGES)} stages at 44.1 kHz** ({wav_mb:.0f} MB of
16-bit WAV in the run's sample folders, which the page used to embed as they are), plus the run's corpus
table, vocal-removal excerpts, objective figures and training curves. The run is a copy of the real-music
benchmark's run ([real_music.md](real_music.md)); its four sample folders hold recorded music, not
generated audio (the loudest 90 s of four tracks of the corpus's package, the same recording in each
stage's slot): the page's size and playback depend on the audio's length, rate and codec, not on the model.

| players carry | kb/s per player | page | `jukebox-lite review` | decoded by Chromium | errors |
|---|---|---|---|---|---|
{table}

"Decoded by Chromium": in the page as `review` wrote it, the browser fetched every `<audio>` element's
source and decoded it whole with its own Web Audio decoder (an OfflineAudioContext, over DevTools);
16 of the players are the samples' 90 s stages, the rest the vocal-removal excerpts. With
`--link-audio` the sample players link the run's WAVs (the page must stay where it can reach them).
`review.audio_codec` (opus, mp3, wav) and `review.bitrate_kbps` set in the recipe or on the command
line choose the rest.

![the review page in headless Chromium](review_page.png)
""")
    print(f"wrote {doc} and {screenshot}")


if __name__ == "__main__":
    main()
