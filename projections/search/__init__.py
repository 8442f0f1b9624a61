"""Search projections: lexical and semantic indexes over listings.

Submodules load their heavy dependencies (onnxruntime, tokenizers) lazily; importing this
package costs nothing.
"""
