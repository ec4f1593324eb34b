"""Storyboards whose shots take frames of other shots, shared by the chain tests."""

from __future__ import annotations

# A demo storyboard's head: image-to-video by default, 3 s shots, no pacing to wait for.
HEAD = """version: 1
name: demo
provider: {requests_per_minute: 6000}
defaults: {model: kling-v3.0-pro-i2v, duration: 3}
shots:
"""
# The upstream shot every chain starts from, and the first shot built on its last frame.
A = '  - {id: a, model: kling-v3.0-pro-t2v, aspect_ratio: "16:9", prompt: "A lighthouse at dusk"}\n'
B = '  - {id: b, prompt: "The keeper climbs", image: {shot: a, frame: last}}\n'
C = '  - {id: c, prompt: "The lamp turns", image: {shot: b, frame: last}}\n'
X = '  - {id: x, model: kling-v3.0-pro-t2v, prompt: "Gulls, unrelated"}\n'
