"""Frame features of a waveform and their on-disk cache.

``extractors`` holds pure functions ``wave -> [frames, dims]`` (MFCC, chroma, mel,
spectral contrast, prosody; one shared STFT) and the pooling of frames into
utterance functionals; ``opensmile_worker`` runs openSMILE's eGeMAPS/ComParE in a
child process. ``cache`` stores each clip's features under a key made of the audio
bytes, the feature config and the extractor version, and extracts what is missing in
parallel.
"""
