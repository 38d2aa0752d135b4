#!/usr/bin/env python3
"""The Python baseline of runnel's flight benchmark: a Kafka service that
scores each flight with LightGBM, as a data scientist would write it:
confluent-kafka in, one Booster.predict per record, JSON out. Offsets are
auto-committed (the client's default), so it does less bookkeeping than
runnel, which commits an offset only once its output is acknowledged.

With `--batch N` it is the service a Python engineer tuning it would
write: `consume(num_messages=N)`, the batch's lines parsed into one
feature matrix, one `predict` for the whole batch, then the outputs.

    flight_service.py [--batch N] BROKERS INPUT OUTPUT MODEL.json COUNT [KEY=VALUE...]

KEY=VALUE pairs are added to the consumer's settings (the benchmark passes
the `fetch.wait.max.ms` runnel's own clients use with the embedded broker).
Exits after COUNT records were consumed and every output was delivered.
"""

import json
import math
import sys

import lightgbm as lgb
import numpy as np
from confluent_kafka import Consumer, Producer


def main():
    args = sys.argv[1:]
    batch = 0
    if args[:1] == ["--batch"]:
        batch = int(args[1])
        if batch < 1:
            sys.exit(f"--batch takes a positive number of records, not {args[1]!r}")
        args = args[2:]
    brokers, input_topic, output_topic, model_path, count = args[:5]
    bad = [arg for arg in args[5:] if "=" not in arg]
    if bad:
        sys.exit(f"consumer settings are KEY=VALUE, not {bad[0]!r}")
    extra = dict(arg.split("=", 1) for arg in args[5:])
    count = int(count)
    with open(model_path, encoding="utf-8") as f:
        artifact = json.load(f)
    booster = lgb.Booster(model_str=artifact["lightgbm"])
    vocab = {name: {w: float(i) for i, w in enumerate(words)}
             for name, words in artifact["categorical"].items()}
    logit = artifact["threshold_logit"]
    name = artifact["name"]

    def number(s):
        return math.nan if s in ("NA", "") else float(int(s))

    def features(line):
        f = line.split(",")
        if len(f) not in (29, 31):
            raise ValueError(f"expected 29 or 31 fields, found {len(f)}")
        dep = number(f[5])
        return [number(f[1]), number(f[3]), math.floor(dep / 100) if not math.isnan(dep) else dep,
                vocab["carrier"].get(f[8], math.nan), vocab["origin"].get(f[16], math.nan),
                vocab["dest"].get(f[17], math.nan), number(f[18])]

    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"python-flight-service-{output_topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        **extra,
    })
    producer = Producer({"bootstrap.servers": brokers, "acks": "all", "linger.ms": 5})
    consumer.subscribe([input_topic])

    def send(key, raw):
        out = {"prediction": "YES" if raw >= logit else "NO",
               "probability": 1.0 / (1.0 + math.exp(-raw)), "raw_score": raw,
               "threshold": artifact["threshold"], "model": name}
        while True:
            try:
                producer.produce(output_topic, json.dumps(out).encode(), key=key)
                return
            except BufferError:
                producer.poll(0.01)

    seen = 0
    while batch and seen < count:
        keys, rows = [], []
        for m in consumer.consume(num_messages=batch, timeout=0.1):
            if m.error():
                continue
            seen += 1
            try:
                rows.append(features(m.value().decode()))
            except ValueError:
                continue
            keys.append(m.key())
        if rows:
            raws = booster.predict(np.array(rows, dtype=np.float64), raw_score=True, num_threads=1)
            for key, raw in zip(keys, raws.tolist()):
                send(key, raw)
        producer.poll(0)
    while seen < count:
        m = consumer.poll(0.1)
        if m is None or m.error():
            continue
        seen += 1
        try:
            row = np.array([features(m.value().decode())], dtype=np.float64)
        except ValueError:
            continue
        send(m.key(), float(booster.predict(row, raw_score=True, num_threads=1)[0]))
        producer.poll(0)
    producer.flush(60)
    consumer.close()


if __name__ == "__main__":
    main()
