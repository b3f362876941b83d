"""The testbed: what lets sift run end to end on an offline CPU, with no Qwen weights and no benchmark videos.

Tiny models built from the real transformers classes (`tiny`), random-weight models at real dimensions
(`random_models`), the SynthAV benchmark (`synthav`), media reading, writing and synthesis (`media`) and the
processor settings that turn a clip into model inputs (`processing`). The core library (`sift`) never
imports it; the apps and the tests do.
"""
