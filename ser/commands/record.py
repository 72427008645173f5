"""``ser record --seconds 5``: record from a microphone, then predict the emotion.

Recording needs the optional ``sounddevice`` package (``pip install 'ser[record]'``)
and the PortAudio library; without them, or without an input device, the command
says which is missing and exits with code 2.
"""

from __future__ import annotations

import argparse
import json

from ser.cli import add_runtime_arg, add_tensorflow_args
from ser.commands.predict import DEFAULT_RUN, format_table


class RecordingUnavailable(RuntimeError):
    """No way to record here; the message says what is missing."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="record from the microphone and predict the emotion")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to record (default 5)")
    p.add_argument(
        "--run",
        default=DEFAULT_RUN,
        metavar="RUN_DIR",
        help=f"run directory (default {DEFAULT_RUN})",
    )
    p.add_argument("--device", help="input device number or name (default: the system's)")
    p.add_argument("--save", metavar="FILE.wav", help="also write the recording to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    add_runtime_arg(p, "auto")
    add_tensorflow_args(p, on_demand=True)
    p.set_defaults(func=run)


def _sounddevice():
    try:
        import sounddevice
    except ImportError:
        raise RecordingUnavailable(
            "recording needs the optional sounddevice package: pip install 'ser[record]'"
        ) from None
    except OSError as exc:  # the package is there, the PortAudio library is not
        raise RecordingUnavailable(
            f"recording needs the PortAudio library ({exc}); on Debian/Ubuntu: "
            "apt-get install libportaudio2"
        ) from None
    return sounddevice


def input_devices(sd) -> list[dict]:
    try:
        devices = list(sd.query_devices())
    except Exception as exc:  # PortAudio errors when there is no audio system at all
        raise RecordingUnavailable(f"no microphone: cannot list audio devices ({exc})") from None
    return [dict(d, index=i) for i, d in enumerate(devices) if d.get("max_input_channels", 0) > 0]


def require_microphone(sd) -> None:
    if not input_devices(sd):
        raise RecordingUnavailable(
            "no microphone: no audio input device found (connect one, or use "
            "`ser predict FILE` on a recording)"
        )


def record(seconds: float, device: str | None = None, sd=None) -> tuple:
    """Record ``seconds`` of mono audio: (float32 wave [samples], sample rate)."""
    import numpy as np

    sd = sd or _sounddevice()
    require_microphone(sd)
    chosen = int(device) if device is not None and device.isdigit() else device
    try:
        info = sd.query_devices(chosen, "input")
        rate = int(info["default_samplerate"])
        wave = sd.rec(
            int(seconds * rate), samplerate=rate, channels=1, dtype="float32", device=chosen
        )
        sd.wait()
    except Exception as exc:
        raise RecordingUnavailable(
            f"recording from device {device or 'default'} failed: {exc}"
        ) from None
    return np.asarray(wave, np.float32).reshape(-1), rate


def run(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.seconds > 600:
        raise RecordingUnavailable(f"--seconds {args.seconds:g}: choose from 0 to 600 seconds")
    sd = _sounddevice()
    if args.list_devices:
        devices = input_devices(sd)
        for d in devices:
            print(
                f"{d['index']:3d}  {d['name']}  ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)"
            )
        if not devices:
            print("no input devices")
        return 0

    require_microphone(sd)
    from ser.audio import resample
    from ser.inference import Predictor, tune_for_inference

    tune_for_inference()
    predictor = Predictor.load(
        args.run, runtime=args.runtime
    )  # before recording: a bad run fails fast
    predictor.warm_up(batch_sizes=(1,))
    print(f"recording {args.seconds:g} s ...", flush=True)
    wave, rate = record(args.seconds, args.device, sd)
    if args.save:
        import soundfile as sf

        sf.write(args.save, wave, rate)
    wave = resample(wave, rate, predictor.sample_rate)
    result = predictor.describe(predictor.predict_clip(wave), args.save or "<microphone>")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table([result], timeline=True))
    return 0
