"""Functions shipped as source and run inside a datasite, on the private rows.

One function per module, each self-contained (standard library, numpy and scikit-learn
imported inside the function; nothing from fl_syft). Every public function of every module
here is a vetted function: the data owner's approver discovers them (``owner.approval``)
and the scientist's algorithms submit them. This package imports nothing.
"""
