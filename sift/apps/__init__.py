"""The apps built on the core library: `sift eval` (`evaluate`), `sift bench` (`bench`), the command line
(`cli`) and the machine facts both record (`machine`). The core library (`sift`) never imports them."""
