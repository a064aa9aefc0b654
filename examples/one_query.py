"""One query in process: MM-R5's own README example, on this library's `Reranker`.

    python examples/one_query.py                                   # i2vec/MM-R5 on a GPU (hf backend)
    python examples/one_query.py --backend vllm                    # the same through vLLM
    python examples/one_query.py --model demo/tiny-model --device cpu --max-new-tokens 8   # offline, tiny random model
    python examples/one_query.py page1.png page2.png page3.png     # your own pages

Without page files it draws three demo pages. It prints the 0-based order,
most relevant first, as MM-R5's `QueryReranker.rerank` does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmr5_batch import Reranker
from mmr5_batch.devtools.demo_data import draw_page


def demo_pages(folder: Path) -> list[str]:
    texts = [
        ("Annual report", ["Chairman's letter", "Outlook for next year"]),
        ("Revenue by region", ["Europe 41%", "Americas 35%", "Asia 24%"]),
        ("Board of directors", ["Names and terms", "Committees"]),
    ]
    paths = []
    for number, (title, lines) in enumerate(texts, 1):
        path = folder / f"page{number}.jpg"
        path.write_bytes(draw_page(title, lines))
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="page images (paths or URIs); default: three demo pages")
    parser.add_argument("--query", default="Which page shows revenue by region?")
    parser.add_argument("--model", default="i2vec/MM-R5")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm", "scripted-test"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        image_list = args.images or demo_pages(Path(folder))
        # MM-R5's README: reranker = QueryReranker("i2vec/MM-R5"); predicted_order = reranker.rerank(query, image_list)
        with Reranker(args.model, backend=args.backend, device=args.device, max_new_tokens=args.max_new_tokens) as reranker:
            predicted_order = reranker.rerank(args.query, image_list)
    print(predicted_order)


if __name__ == "__main__":
    main()
