"""See the graph a forward pass recorded: ``explain(loss)`` as text,
``draw_graph(loss, "graph.svg")`` as a picture.

Every tensor an op makes remembers the op (``_op``), its inputs
(``_parents``) and its shape, while a gradient may flow through it; that is
the graph ``Tensor.backward`` walks (numgpt/autograd.py). Draw it before
calling ``backward()``, which frees it.

With ``model=`` the leaves are named by the model's parameters
(``trf_blocks.3.att.W_query.weight``), and the transformer blocks after the
first, which repeat its ops exactly, are collapsed into one line (one box):
each op is placed in the block of the parameters it depends on most
recently (the residual stream carries each block's output into the next).
"""
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from numgpt.errors import UsageError
from numgpt.safe_write import atomic_write

BLOCK_PARAMETER = re.compile(r"trf_blocks\.(\d+)\.")
GRAPH_FORMATS = (".svg", ".png", ".pdf", ".dot")


class Node(NamedTuple):
    number: int          # 1-based, in the order a forward made them (parents first)
    label: str           # the op, or the leaf's name
    shape: tuple
    kind: str            # "op", "parameter" (a leaf that needs grad) or "constant"
    parents: tuple       # numbers of the parent nodes
    block: int           # transformer block index, -1 before the blocks, n_layers after them


def _ordered_tensors(root):
    """Every tensor of root's graph, parents before children (an iterative depth-first walk)."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        stack.append((tensor, True))
        stack.extend((parent, False) for parent in reversed(tensor._parents) if parent is not None)
    return order


def graph_nodes(root, model=None):
    """The nodes of ``root``'s graph (see ``Node``), in order."""
    if not root._parents:
        raise UsageError("this tensor has no graph to show: it is a leaf, was made under no_grad, needs no "
                         "gradient, or its graph was freed by backward() (draw it before backward)")
    names = {id(p): name for name, p in model.named_parameters()} if model is not None else {}
    n_layers = model.cfg["n_layers"] if model is not None and hasattr(model, "cfg") else 0
    numbers, nodes = {}, []
    for tensor in _ordered_tensors(root):
        parents = tuple(numbers[id(p)] for p in tensor._parents if p is not None)
        if tensor._parents:
            label, kind = tensor._op or "op", "op"
            block = max((nodes[n - 1].block for n in parents), default=-1)
        else:
            name = names.get(id(tensor))
            label = name or ("leaf" if tensor.requires_grad else "constant")
            kind = "parameter" if tensor.requires_grad else "constant"
            block = _block_of_parameter(name, n_layers) if name else -1
        numbers[id(tensor)] = len(nodes) + 1
        shape = () if tensor.data is None else tuple(tensor.shape)     # no array: the node of a several-output op
        nodes.append(Node(len(nodes) + 1, label, shape, kind, parents, block))
    return nodes


def _block_of_parameter(name, n_layers):
    """-1 for the embeddings, i for trf_blocks.i.*, n_layers for what follows the blocks."""
    match = BLOCK_PARAMETER.match(name)
    if match:
        return int(match.group(1))
    return -1 if name.startswith(("tok_emb.", "pos_emb.")) else n_layers


def _collapsed(nodes):
    """(nodes to show, the first block, text for the hidden ones): blocks after the first are
    hidden when their ops repeat the first block's; (nodes, None, None) otherwise."""
    blocks = sorted({n.block for n in nodes if n.block >= 0})
    inner = blocks[:-1]                                     # the last index is "after the blocks"
    if len(inner) < 2:
        return nodes, None, None
    ops_of = {b: [n.label for n in nodes if n.block == b and n.kind == "op"] for b in inner}
    if any(ops_of[b] != ops_of[inner[0]] for b in inner[1:]):
        return nodes, None, None
    hidden = set(inner[1:])
    summary = (f"trf_blocks.{inner[1]} .. trf_blocks.{inner[-1]}: {len(inner) - 1} more blocks, each the same "
               f"{len(ops_of[inner[0]])} ops as trf_blocks.{inner[0]}")
    return [n for n in nodes if n.block not in hidden], inner[0], summary


def explain(root, model=None):
    """The graph of ``root`` as text: one line per op and leaf, parents first."""
    nodes = graph_nodes(root, model)
    shown, first_block, summary = _collapsed(nodes)
    ops = sum(n.kind == "op" for n in nodes)
    params = sum(n.kind == "parameter" for n in nodes)
    lines = [f"graph of a {root._op} {tuple(root.shape)}: {ops} ops over {params} tensors that need gradients"]
    for node in shown:
        if summary and node.block > first_block:            # the first node past the first block
            lines.append(f"        ... {summary}")
            summary = None
        inputs = ", ".join(f"#{p}" for p in node.parents)
        note = "  (no gradient)" if node.kind == "constant" else ""
        lines.append(f"#{node.number:<5} {node.label:<40} {str(node.shape):<18} "
                     f"{('<- ' + inputs) if inputs else ''}{note}".rstrip())
    return "\n".join(lines)


def _dot(nodes, summary):
    lines = ["digraph numgpt {", "  rankdir=TB; node [fontname=Helvetica, fontsize=10];"]
    for n in nodes:
        style = {"op": "shape=box, style=rounded", "parameter": "shape=ellipse, color=darkgreen",
                 "constant": "shape=ellipse, color=gray"}[n.kind]
        lines.append(f'  n{n.number} [label="{n.label}\\n{n.shape}", {style}];')
    shown = {n.number for n in nodes}
    for n in nodes:
        lines += [f"  n{p} -> n{n.number};" for p in n.parents if p in shown]
    if summary:
        lines.append(f'  collapsed [label="{summary}", shape=note];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _boxes(nodes, first_block, summary):
    """The picture's boxes: (key, text, kind, parent keys). Ops only; each op's leaves are written
    inside its box; the hidden blocks become one box between the first block and what follows."""
    by_number = {n.number: n for n in nodes}
    shown = {n.number for n in nodes}
    last_of_first = max((n.number for n in nodes if n.block == first_block and n.kind == "op"), default=None)
    boxes = []
    for n in nodes:
        if n.kind != "op":
            continue
        leaves = [by_number[p] for p in n.parents if p in shown and by_number[p].kind != "op"]
        parents = [p for p in n.parents if p in shown and by_number[p].kind == "op"]
        if summary and any(p not in shown for p in n.parents):
            parents.append("blocks")                        # fed by the hidden blocks
        text = "\n".join([n.label, str(n.shape), *(f"{leaf.label} {leaf.shape}" for leaf in leaves)])
        boxes.append((n.number, text, "op", parents))
        if summary and n.number == last_of_first:
            boxes.append(("blocks", summary.replace(": ", ":\n"), "collapsed", [n.number]))
    return boxes


def draw_graph(root, path, model=None):
    """Draw ``root``'s graph to ``path`` (.svg, .png, .pdf; .dot writes Graphviz source):
    one box per op with its output shape and the parameters it reads, arrows from inputs to ops."""
    path = Path(path)
    if path.suffix.lower() not in GRAPH_FORMATS:
        raise UsageError(f"graph file {path} must end in one of {', '.join(GRAPH_FORMATS)}")
    nodes, first_block, summary = _collapsed(graph_nodes(root, model))
    if path.suffix.lower() == ".dot":
        text = _dot(nodes, summary).encode("utf-8")
        atomic_write(path, lambda fh: fh.write(text))
        return path
    # matplotlib: heavy, only for drawing
    from matplotlib.figure import Figure

    boxes = _boxes(nodes, first_block, summary)
    # layered layout: a box's row is one below its deepest parent; each row is centred
    row = {}
    for key, _, _, parents in boxes:
        row[key] = 1 + max((row[p] for p in parents if p in row), default=-1)
    per_row = Counter(row.values())
    column, placed = {}, Counter()
    for key, *_ in boxes:
        column[key] = placed[row[key]] - (per_row[row[key]] - 1) / 2
        placed[row[key]] += 1
    width, height = max(per_row.values()), max(row.values()) + 1
    fig = Figure(figsize=(max(5.0, 2.6 * width), max(4.0, 0.9 * height)))
    ax = fig.subplots()
    ax.set_axis_off()
    for key, _, _, parents in boxes:
        for p in parents:
            skip = row[key] - row[p] > 1                    # a residual connection: curve around the boxes
            ax.annotate("", xy=(column[key], -row[key]), xytext=(column[p], -row[p]),
                        arrowprops={"arrowstyle": "->", "color": "0.55", "lw": 0.7,
                                    "connectionstyle": f"arc3,rad={0.5 if skip else 0.0}"})
    colors = {"op": "#dde8f7", "collapsed": "#f7ecd0"}
    for key, text, kind, _ in boxes:
        ax.text(column[key], -row[key], text, ha="center", va="center", fontsize=6,
                bbox={"boxstyle": "round", "fc": colors[kind], "ec": "0.4", "lw": 0.5})
    ax.set_xlim(-width / 2 - 0.5, width / 2 + 0.5)
    ax.set_ylim(-height + 0.4, 0.6)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format=path.suffix.lower()[1:]))
    return path
