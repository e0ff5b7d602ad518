"""Static analysis of policy sets with an SMT solver (Z3): what a set can allow, what a change allows.

The decision of a policy set for one operation is encoded as a formula over a symbolic request; the solver
either proves a question impossible or produces a witness request, which is re-decided by the real engine
before it is reported. See docs/analysis.md.
"""
