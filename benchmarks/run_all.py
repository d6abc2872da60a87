"""`make bench`: every benchmark with its defaults, one after the other."""

from benchmarks import serving, training

BENCHMARKS = [serving.main, training.main]


def main() -> None:
    for run in BENCHMARKS:
        run([])


if __name__ == "__main__":
    main()
