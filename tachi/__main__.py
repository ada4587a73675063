from tachi.launch import main

main()
