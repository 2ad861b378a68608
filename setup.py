from setuptools import find_packages, setup

setup(
    name="regd",
    version="0.1.0",
    description="Container image registry daemon on Twisted (Docker Registry V2 / OCI Distribution 1.1)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/regd_plugin.py"]},
    install_requires=[
        "twisted>=24.7.0",
        "klein>=23.12.0",
        "treq>=23.11.0",
        "service-identity>=24.1.0",
        "pyopenssl>=24.0.0",
        "pyyaml>=6.0",
        "attrs>=23.1.0",
        "zope.interface>=6.0",
        "werkzeug>=3.0",
        "prometheus-client>=0.19",
        "bcrypt>=4.0",
        "pyjwt[crypto]>=2.8",
        "acme>=2.0",
    ],
    extras_require={"test": ["pytest>=8.0", "hypothesis>=6.100"]},
)
