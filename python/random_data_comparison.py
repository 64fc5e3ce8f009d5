"""What the two random-data examples print: one model without and one with the
calibration, trained alike, and their losses side by side."""

NOTE = (
    "Both start at the same loss: the calibration's last gate layers start at zero, so it is the identity\n"
    "until they learn. On random data a later difference is the noise of two optimisation paths, not\n"
    "evidence either way; the real-data experiment is docs/robustness.md."
)


def compare(plain, calibrated, train, steps: int, seed: int) -> None:
    """Train both with ``train(model, steps, seed)`` (a list of losses) and print the comparison."""
    print(NOTE)
    finals = {}
    for name, model in (("without calibration", plain), ("with calibration", calibrated)):
        losses = train(model, steps, seed)
        shown = ", ".join(f"{x:.4f}" for x in losses[:: max(1, len(losses) // 6)])
        tail = sum(losses[-10:]) / len(losses[-10:])
        print(f"{name:>20}: loss {shown} ... mean of the last 10 steps {tail:.4f}")
        finals[name] = tail
    diff = finals["with calibration"] - finals["without calibration"]
    print(f"difference of the last-10 means (with - without): {diff:+.4f} after {steps} steps on random data")
