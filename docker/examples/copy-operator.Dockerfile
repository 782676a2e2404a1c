# A real Clara-style operator to wrap (docker/clara-operator-wrapper.Dockerfile's default base):
# Python 3.9 on Debian bullseye, i.e. an older glibc (2.31) and another Python than radflow's,
# as many existing operator images are. It copies every file of /input to /output and writes a
# count and the Python version it ran with, the Clara way (fixed folders, exit code):
#   docker build -f docker/examples/copy-operator.Dockerfile -t radflow-examples/copy-operator:1.0 .
# A pipeline names it as `container: {image: radflow-examples/copy-operator, tag: "1.0",
# command: [python3, /opt/operator/copy.py]}`.
FROM debian:bullseye-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/operator \
 && printf '%s\n' \
      'import pathlib, shutil, sys' \
      'src, out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/input"), pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "/output")' \
      'files = sorted(p for p in src.rglob("*") if p.is_file())' \
      'out.mkdir(parents=True, exist_ok=True)' \
      'for p in files:' \
      '    (out / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)' \
      '    shutil.copyfile(p, out / p.relative_to(src))' \
      '(out / "count.txt").write_text(str(len(files)))' \
      '(out / "python.txt").write_text(sys.version.split()[0])' \
      'print(f"copied {len(files)} files with Python {sys.version.split()[0]}")' \
      > /opt/operator/copy.py
CMD ["python3", "/opt/operator/copy.py", "/input", "/output"]
