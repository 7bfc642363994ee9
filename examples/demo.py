"""A small CPU-bound program to profile: perf shows each of these functions by name.

    python examples/demo.py [map|jit|both] [seconds] [jitdump directory]
"""

import sys
import time

import perftramp


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def tokenize(text):
    return [word.strip(".,").lower() for word in text.split()]


def count_words(words):
    counts = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    return counts


def word_report(text):
    counts = count_words(tokenize(text))
    return sorted(counts.items(), key=lambda item: -item[1])[:3]


def main(seconds):
    text = "the quick brown fox jumps over the lazy dog. The dog sleeps, the fox runs. " * 200
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        fib(18)
        word_report(text)
        rounds += 1
    return rounds


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "jit"
    directory = sys.argv[3] if len(sys.argv) > 3 and mode != "map" else None
    perftramp.enable(mode, directory=directory)
    print(f"{main(float(sys.argv[2]) if len(sys.argv) > 2 else 2.0)} rounds; {perftramp.status()}")
