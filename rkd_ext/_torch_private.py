"""Every private torch helper rkd_ext uses, in one place: why each is needed, and when it can go.

torch promises nothing about these names; gathering them here means a torch
release that renames one breaks one import line, and the test suite (which runs
every path below) says which. Each entry names the public API that would
replace it. The floor release is torch 2.10 (docs/install.md). Not here:
``torch._check``, which torch documents for shape checks that torch.compile
can trace.
"""
import torch
import torch._dynamo.comptime
import torch._functorch.utils
import torch.autograd.forward_ad

__all__ = [
    "SingleLevelFunction", "enable_single_level_autograd_function", "set_fwd_grad_enabled",
    "below_autograd", "has_kernel_for", "schema_exists", "comptime", "compiled_autograd_key", "profiler_records",
]

# What compiled autograd identifies a Function's backward by; a Function class
# built with type() (one per operator) must carry it as autograd.Function's
# metaclass would give it. Goes with SingleLevelFunction.
compiled_autograd_key = torch.autograd.Function._compiled_autograd_key

# The base of the autograd.Function behind each operator's Autograd kernel
# (ops._register_autograd_formula). A dispatcher Autograd kernel is reached
# once per torch.func level, so it must record the op at that level only, as
# the single-level Functions torch.func generates for autograd.Function do.
# torch.library.register_autograd would be the public way, but its generated
# Function has no setup_context, which torch.func's transforms require
# (pytorch/pytorch#170834), and it skips autograd unless an input requires
# grad, dropping a forward-mode tangent silently. Can go when
# register_autograd's Function works under torch.func and refuses forward mode.
SingleLevelFunction = torch.autograd.function._SingleLevelFunction

# Applying a single-level Function is refused outside this context
# (torch.func's own guard). Goes with SingleLevelFunction.
enable_single_level_autograd_function = torch._functorch.utils.enable_single_level_autograd_function

# Gradients of enclosing torch.func levels are recorded only with forward-mode
# recording on, as torch.func does for its autograd.Function support; the
# Function's forward runs with it off. Goes with SingleLevelFunction.
set_fwd_grad_enabled = torch.autograd.forward_ad._set_fwd_grad_enabled


def below_autograd():
    """Dispatch below the Autograd key for the calls inside this context.

    The forward of an operator's autograd Function calls the operator again,
    which must reach its backend kernel, not the Autograd kernel that is
    running; and a plain backward (no create_graph) calls its ``*_backward``
    operator past the autograd kernel that only refuses double backward, a
    Function application less per step. Public equivalent: none (C++
    extensions use at::AutoDispatchBelowAutograd); can go if the operators'
    autograd moves into the extension or torch exposes the guard.
    """
    return torch._C._AutoDispatchBelowAutograd()


def has_kernel_for(qualname, key):
    """Whether operator ``qualname`` has a kernel for dispatch key ``key`` ("CPU", "CUDA").

    Decides between the compiled kernel and the pure-PyTorch reference without
    calling the op (an extension built without CUDA still defines the schema).
    Public equivalent: none in torch 2.10 (torch.library has no query for a
    registered backend kernel); can go when one exists.
    """
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)


def schema_exists(qualname):
    """Whether the loaded extension defines operator ``qualname`` at all.

    An extension built before an operator existed lacks its schema; fake
    kernels are registered only for the operators it defines. Public
    equivalent: hasattr on torch.ops raises or builds a packet lazily; this
    asks the dispatcher directly. Can go with a public schema lookup.
    """
    try:
        torch._C._dispatch_find_schema_or_throw(qualname, "")
    except RuntimeError:
        return False
    return True


# Runs a Python callback while Dynamo traces, used to give the one-time
# warning for a batch without relations under torch.compile (fullgraph=True
# cannot put warnings.warn in a graph). Public equivalent: none; it can go
# when torch.compiler gains a trace-time hook or warnings become traceable.
comptime = torch._dynamo.comptime.comptime


def profiler_records(prof):
    """The raw event records of a finished ``torch.profiler.profile``, or None where torch does not expose them.

    The main job's loss-cost measurement reads the allocator's "[memory]"
    records (one per allocation or free, with their bytes and times) to find
    the loss's peak on the CPU. ``prof.profiler.kineto_results`` has no
    underscore but is not documented. Public equivalent: none that gives the
    peak of a call (``key_averages`` gives net usage per operator,
    ``export_memory_timeline`` a file); can go when torch.profiler exposes the
    records or a CPU peak counter. Callers must handle None.
    """
    return getattr(getattr(prof, "profiler", None), "kineto_results", None)
